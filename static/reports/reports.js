/* Report charts (Chart.js) from the JSON spec the page embeds, and the live view's refresh. */
(function () {
  "use strict";
  var charts = [];
  var BLUE = "rgba(36, 84, 214, 1)", BLUE_FILL = "rgba(36, 84, 214, 0.25)", GREY = "rgba(91, 100, 117, 0.9)";

  function fmt(v, unit) {
    if (v === null || v === undefined) return "–";
    return unit === "%" ? v.toFixed(1) + "%" : v.toFixed(0);
  }

  function referenceLine(value) {
    // A thin vertical line at the reference value (50%, rating 1000), drawn after the datasets.
    return {
      id: "reference",
      afterDatasetsDraw: function (chart) {
        if (value === null || value === undefined) return;
        var x = chart.scales.x.getPixelForValue(value), area = chart.chartArea, ctx = chart.ctx;
        if (x < area.left || x > area.right) return;
        ctx.save(); ctx.strokeStyle = "rgba(29, 35, 48, 0.55)"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(x, area.top); ctx.lineTo(x, area.bottom); ctx.stroke(); ctx.restore();
      }
    };
  }

  function intervalChart(canvas, spec) {
    var box = canvas.parentNode;
    box.style.height = Math.max(140, 48 + 34 * spec.labels.length) + "px";
    var datasets = [
      { type: "bar", label: "95% interval", data: spec.labels.map(function (_, i) {
          return spec.low[i] === null ? null : [spec.low[i], spec.high[i]]; }),
        backgroundColor: BLUE_FILL, borderColor: BLUE, borderWidth: 1, barPercentage: 0.55, order: 2 },
      { type: "line", label: spec.estimate_label || "estimate", data: spec.estimate, showLine: false, pointRadius: 5,
        pointStyle: "circle", pointBackgroundColor: BLUE, pointBorderColor: "#fff", order: 1 }
    ];
    if (spec.raw) {
      datasets.push({ type: "line", label: "raw win rate", data: spec.raw, showLine: false, pointRadius: 5,
        pointStyle: "crossRot", pointBorderColor: GREY, pointBorderWidth: 2, order: 0 });
    }
    var values = [].concat(spec.low, spec.high, spec.raw || []).filter(function (v) { return v !== null; });
    var scale = { title: { display: !!spec.axis_label, text: spec.axis_label } };
    if (spec.unit === "%") { scale.min = 0; scale.max = 100; }
    else if (values.length) {
      var lo = Math.min.apply(null, values.concat([spec.reference || values[0]]));
      var hi = Math.max.apply(null, values.concat([spec.reference || values[0]]));
      var pad = Math.max(10, (hi - lo) * 0.08);
      scale.min = Math.floor((lo - pad) / 10) * 10; scale.max = Math.ceil((hi + pad) / 10) * 10;
    }
    return new Chart(canvas, {
      data: { labels: spec.labels, datasets: datasets },
      plugins: [referenceLine(spec.reference)],
      options: {
        indexAxis: "y", responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: scale, y: { grid: { display: false } } },
        plugins: {
          legend: { display: !!spec.raw, position: "bottom", labels: { usePointStyle: true } },
          tooltip: { callbacks: { label: function (ctx) {
            var i = ctx.dataIndex;
            if (ctx.dataset.type === "bar") return "95% CI " + fmt(spec.low[i], spec.unit) + " – " + fmt(spec.high[i], spec.unit);
            return ctx.dataset.label + ": " + fmt(ctx.raw, spec.unit);
          } } }
        }
      }
    });
  }

  function timeTick(datasets) {
    // Dates when the data spans days, clock times (with seconds when it spans minutes) otherwise.
    var xs = [].concat.apply([], datasets.map(function (d) { return d.data.map(function (p) { return p.x; }); }));
    var span = xs.length ? Math.max.apply(null, xs) - Math.min.apply(null, xs) : 0;
    return function (v) {
      var d = new Date(v);
      if (span > 2 * 86400e3) return d.toLocaleDateString();
      if (span > 2 * 3600e3) return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " +
        d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: span < 600e3 ? "2-digit" : undefined });
    };
  }

  function lineChart(canvas, spec) {
    canvas.parentNode.style.height = canvas.parentNode.classList.contains("small") ? "200px" : "260px";
    var palette = ["#2454d6", "#d6452a", "#17802f", "#8a3fd1", "#c28a00", "#0d8a8a", "#5b6475"];
    var datasets = spec.series.map(function (s, i) {
      return { label: s.label, borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length],
        pointRadius: s.points.length > 60 ? 0 : 2, borderWidth: 2, tension: 0,
        data: s.points.map(function (p) { return { x: spec.time ? Date.parse(p.x) : p.x, y: p.y }; }) };
    });
    return new Chart(canvas, {
      type: "line", data: { datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, parsing: false,
        scales: {
          x: { type: "linear", title: { display: true, text: spec.time ? "time" : "step" },
               ticks: spec.time ? { maxTicksLimit: 6, callback: timeTick(datasets) } : {} },
          y: { title: { display: !!spec.axis_label, text: spec.axis_label } }
        },
        plugins: { legend: { display: datasets.length > 1, position: "bottom" } }
      }
    });
  }

  function init(root) {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    var node = root.querySelector("#report-charts");
    if (!node || typeof Chart === "undefined") return;
    JSON.parse(node.textContent).forEach(function (spec) {
      var canvas = root.querySelector("#" + spec.id);
      if (!canvas) return;
      charts.push(spec.kind === "interval" ? intervalChart(canvas, spec) : lineChart(canvas, spec));
    });
  }

  function live(body) {
    // Re-fetch this page and swap in the new report body; keeps scroll position and open <details>.
    var seconds = parseInt(body.dataset.liveSeconds || "10", 10);
    setInterval(function () {
      if (document.hidden) return;
      fetch(window.location.href, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("report-body");
          var current = document.getElementById("report-body");
          if (!fresh || !current) return;
          var open = Array.prototype.map.call(current.querySelectorAll("details"), function (d) { return d.open; });
          current.innerHTML = fresh.innerHTML;
          current.querySelectorAll("details").forEach(function (d, i) { if (open[i]) d.open = true; });
          init(current);
        })
        .catch(function () { /* a failed refresh leaves the last good report on screen */ });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    var body = document.getElementById("report-body");
    if (body && body.dataset.live === "1") live(body);
  });
  // Print: open collapsed details so every table prints, and fit charts to the paper width.
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details.print-open").forEach(function (d) { d.dataset.wasOpen = d.open ? "1" : ""; d.open = true; });
    charts.forEach(function (c) { c.resize(); });
  });
  window.addEventListener("afterprint", function () {
    document.querySelectorAll("details.print-open").forEach(function (d) { d.open = d.dataset.wasOpen === "1"; });
    charts.forEach(function (c) { c.resize(); });
  });
})();
