// Refreshes progress bars and status badges on the admin job list while jobs run.
(function () {
  const url = document.getElementById("jobs-js").dataset.statusUrl;
  const active = new Set(["queued", "running"]);
  function cells() { return Array.from(document.querySelectorAll(".job-progress")); }
  async function tick() {
    const live = cells().filter((c) => active.has(c.dataset.status));
    if (!live.length) return;
    const ids = live.map((c) => c.dataset.jobId).join(",");
    try {
      const r = await fetch(url + "?ids=" + ids, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      for (const job of data.jobs) {
        const cell = document.querySelector('.job-progress[data-job-id="' + job.id + '"]');
        if (!cell) continue;
        const pct = Math.round(job.progress * 100);
        cell.querySelector("progress").value = pct;
        cell.querySelector(".job-pct").textContent = pct + "%";
        cell.dataset.status = job.status;
        const row = cell.closest("tr");
        const badge = row && row.querySelector(".job-status");
        if (badge) { badge.className = "job-status job-status-" + job.status; badge.textContent = job.status_label; }
        const msg = row && row.querySelector(".field-message");
        if (msg) msg.textContent = job.message;
      }
    } catch (e) { /* server restarting: try again next tick */ }
  }
  setInterval(tick, 2000);
})();
