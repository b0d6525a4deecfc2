// Live job page: progress, log tail, child jobs and one chart per metric, updated while it runs.
(function () {
  const root = document.getElementById("job-live");
  if (!root) return;
  const url = root.dataset.url;
  const charts = {};
  let lastStep = -1;
  let status = root.dataset.status;
  const chartsBox = document.getElementById("job-charts");

  function chartFor(key) {
    if (charts[key]) return charts[key];
    chartsBox.hidden = false;
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = key.replace(/_/g, " ");
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", key + " by step");
    fig.append(cap, canvas);
    chartsBox.append(fig);
    charts[key] = new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [{ label: key, data: [], borderWidth: 1.5, pointRadius: 0, tension: 0.2 }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
                 scales: { x: { title: { display: true, text: "step" } } } },
    });
    return charts[key];
  }

  function render(job) {
    status = job.status;
    const badge = document.getElementById("job-status");
    badge.className = "job-status job-status-" + job.status;
    badge.textContent = job.status_label;
    document.getElementById("job-progress").value = job.progress;
    document.getElementById("job-pct").textContent = Math.round(job.progress * 100) + "%";
    document.getElementById("job-message").textContent = job.message;
    const err = document.getElementById("job-error");
    err.hidden = !job.error;
    err.textContent = job.error;
    const logEl = document.getElementById("job-log");
    const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
    logEl.textContent = job.log;
    if (atBottom) logEl.scrollTop = logEl.scrollHeight;
    for (const m of job.metrics) {
      for (const [k, v] of Object.entries(m)) {
        if (k === "step" || typeof v !== "number") continue;
        const c = chartFor(k);
        c.data.labels.push(m.step);
        c.data.datasets[0].data.push(v);
      }
      lastStep = Math.max(lastStep, m.step);
    }
    Object.values(charts).forEach((c) => c.update("none"));
    const kids = document.getElementById("job-children");
    if (job.children.length) {
      kids.innerHTML = "<h3>Parts</h3>";
      const ul = document.createElement("ul");
      for (const c of job.children) {
        const li = document.createElement("li");
        li.textContent = "#" + c.id + " " + c.name + " — " + c.status_label + " " + Math.round(c.progress * 100) + "% " + c.message;
        ul.append(li);
      }
      kids.append(ul);
    }
  }

  async function tick() {
    try {
      const r = await fetch(url + "?after_step=" + lastStep, { credentials: "same-origin" });
      if (r.ok) render(await r.json());
    } catch (e) { /* try again */ }
    if (status === "queued" || status === "running") setTimeout(tick, 1500);
  }
  tick();
})();
