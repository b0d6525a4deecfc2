// Experiment page: stage table and status refresh while it runs; RL curves per arm.
(function () {
  const live = document.getElementById("exp-live");
  const rlData = JSON.parse(document.getElementById("rl-data").textContent || "{}");
  const charts = {};

  function drawRL(data) {
    for (const [id, key, title] of [["rl-reward", "reward_mean", "reward (mean)"], ["rl-kl", "kl", "KL(π‖π_SFT)"]]) {
      const datasets = Object.entries(data || {}).filter(([, r]) => r && r.curve).map(([arm, r]) => ({
        label: arm, data: r.curve.map((p) => ({ x: p.step, y: p[key] })), pointRadius: 0, borderWidth: 1.5,
      }));
      if (!datasets.length) continue;
      document.getElementById(id).closest(".exp-charts").hidden = false;
      if (charts[id]) { charts[id].data.datasets = datasets; charts[id].update("none"); continue; }
      charts[id] = new Chart(document.getElementById(id), {
        type: "line", data: { datasets },
        options: { animation: false, parsing: true, maintainAspectRatio: false, plugins: { title: { display: true, text: title } },
                   scales: { x: { type: "linear", title: { display: true, text: "step" } } } },
      });
    }
  }
  drawRL(rlData);

  let status = live.dataset.status;
  async function tick() {
    try {
      const r = await fetch(live.dataset.url, { credentials: "same-origin" });
      if (r.ok) {
        const d = await r.json();
        if (d.status !== status && (d.status === "succeeded" || d.status === "failed" || d.status === "cancelled")) {
          location.reload();  // final figures are drawn server-side
          return;
        }
        status = d.status;
        document.getElementById("exp-progress").value = d.progress;
        document.getElementById("exp-pct").textContent = Math.round(d.progress * 100) + "%";
        document.getElementById("exp-message").textContent = d.message;
        const badge = document.getElementById("exp-status");
        badge.className = "job-status job-status-" + d.status;
        badge.textContent = d.status.charAt(0).toUpperCase() + d.status.slice(1);
        for (const s of d.stages) {
          const row = document.querySelector('tr[data-stage="' + s.name + '"]');
          if (!row) { location.reload(); return; }
          row.querySelector(".stage-progress").value = s.progress;
          const b = row.querySelector(".stage-status span");
          b.className = "job-status job-status-" + s.status;
          b.textContent = s.status.charAt(0).toUpperCase() + s.status.slice(1);
          row.querySelector(".stage-message").textContent = s.message;
          if (s.job_id && row.querySelector(".stage-job").textContent.trim() === "—") {
            row.querySelector(".stage-job").innerHTML = '<a href="/admin/jobs/job/' + s.job_id + '/change/">#' + s.job_id + "</a>";
          }
        }
        drawRL(d.figures && d.figures.rl);
      }
    } catch (e) { /* retry */ }
    if (status === "running") setTimeout(tick, 3000);
  }
  if (status === "running") setTimeout(tick, 3000);
})();
