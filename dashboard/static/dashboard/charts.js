// History chart on the run page: size and every recorded metric over steps.
// Data comes thinned by the server (at most a few hundred points), so runs of any length draw fast.
// Steps whose files are gone (pruned, rotated out or missing) keep their metrics on the curves, drawn as crosses.
// The live refresh (live.js) fires "run:changed" on the document: the data is fetched and drawn again.
(function () {
  "use strict";
  const canvas = document.getElementById("history-chart");
  if (!canvas || typeof Chart === "undefined") return;
  const section = canvas.closest("section") || canvas.closest("figure");
  const palette = ["#2e90fa", "#12b76a", "#f79009", "#9e77ed", "#f04438", "#0ba5ec"];
  let chart = null;
  const draw = () => fetch(canvas.dataset.src, { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((data) => {
      section.hidden = data.steps.length === 0;
      if (chart) chart.destroy();
      const gone = data.gone || [];
      const dense = data.steps.length > 60;
      const isGone = (ctx) => gone[ctx.dataIndex] === true;
      const datasets = [{
        label: "size (MB)", yAxisID: "size", borderColor: "#98a2b3", backgroundColor: "#98a2b3",
        data: data.size_bytes.map((b) => (b === null ? null : b / 1e6)), pointRadius: 0, borderWidth: 1.5, stepped: true,
      }];
      Object.entries(data.metrics).forEach(([name, values], i) => {
        const color = palette[i % palette.length];
        datasets.push({ label: name, yAxisID: "metric", borderColor: color, backgroundColor: color,
          data: values, borderWidth: 2, spanGaps: true,
          pointStyle: (ctx) => (isGone(ctx) ? "crossRot" : "circle"),
          pointRadius: (ctx) => (isGone(ctx) ? 5 : dense ? 0 : 2),
          pointBorderWidth: (ctx) => (isGone(ctx) ? 2 : 1) });
      });
      chart = new Chart(canvas, {
        type: "line",
        data: { labels: data.steps, datasets },
        options: {
          animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
          plugins: {
            tooltip: { callbacks: { footer: (items) => (items.length && gone[items[0].dataIndex] ? "files gone (pruned or missing)" : "") } },
          },
          scales: {
            x: { title: { display: true, text: data.shown < data.total ? `step (${data.shown} of ${data.total} shown)` : "step" } },
            size: { position: "left", title: { display: true, text: "MB" }, beginAtZero: true },
            metric: { position: "right", display: datasets.length > 1, grid: { drawOnChartArea: false } },
          },
        },
      });
      const note = document.getElementById("history-chart-gone");
      if (note) note.hidden = !gone.some(Boolean);
    })
    .catch(() => { if (!chart) section.hidden = true; });
  draw();
  document.addEventListener("run:changed", draw);
})();
