// History chart on the run page: size and every metric over steps.
// Metrics read from event files come as full curves (every logged step, cut down by the server to
// at most a couple of thousand points per tag) with the checkpoints marked on them as dots; metrics
// only recorded at checkpoints (our own save jobs) are lines through those dots.
// Steps whose files are gone (pruned, rotated out or missing) keep their metrics on the curves, drawn as crosses.
// The live refresh (live.js) fires "run:changed" on the document: the data is fetched and drawn again.
(function () {
  "use strict";
  const canvas = document.getElementById("history-chart");
  if (!canvas || typeof Chart === "undefined") return;
  const palette = ["#2e90fa", "#12b76a", "#f79009", "#9e77ed", "#f04438", "#0ba5ec"];
  const section = canvas.closest("section") || canvas.closest("figure");
  let chart = null;
  const draw = () => fetch(canvas.dataset.src, { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((data) => {
      section.hidden = data.steps.length === 0;
      if (chart) chart.destroy();
      const gone = data.gone || [];
      const curves = data.curves || {};
      const dense = data.steps.length > 60;
      const isGone = (ctx) => Boolean(ctx.raw && ctx.raw.gone);
      const datasets = [{
        label: "size (MB)", yAxisID: "size", borderColor: "#98a2b3", backgroundColor: "#98a2b3",
        data: data.steps.map((s, i) => ({ x: s, y: data.size_bytes[i] === null ? null : data.size_bytes[i] / 1e6 })),
        pointRadius: 0, borderWidth: 1.5, stepped: true,
      }];
      const names = [...new Set([...Object.keys(curves), ...Object.keys(data.metrics)])].sort();
      names.forEach((name, i) => {
        const color = palette[i % palette.length];
        const curve = curves[name];
        const atCheckpoints = (data.metrics[name] || [])
          .map((y, j) => ({ x: data.steps[j], y, gone: gone[j] === true }))
          .filter((p) => p.y !== null && p.y !== undefined);
        const marks = {
          label: curve ? `${name} at checkpoints` : name, yAxisID: "metric", borderColor: color, backgroundColor: color,
          data: atCheckpoints, showLine: !curve, borderWidth: 2, spanGaps: true, marks: Boolean(curve),
          pointStyle: (ctx) => (isGone(ctx) ? "crossRot" : "circle"),
          pointRadius: (ctx) => (isGone(ctx) ? 5 : curve ? 3 : dense ? 0 : 2),
          pointBorderWidth: (ctx) => (isGone(ctx) ? 2 : 1),
        };
        if (curve) {
          datasets.push({
            label: name, yAxisID: "metric", borderColor: color, backgroundColor: color, borderWidth: 1.5,
            data: curve.steps.map((s, j) => ({ x: s, y: curve.values[j] })), pointRadius: 0, spanGaps: false,
          });
        }
        datasets.push(marks);
      });
      const totals = Object.values(curves).map((c) => c.total);
      // On a phone: fewer, shorter tick labels and the legend below, so the plot keeps its width.
      const narrow = canvas.clientWidth < 520;
      const stepLabel = (value) => (Math.abs(value) >= 10000 ? `${Math.round(value / 1000)}k` : `${value}`);
      chart = new Chart(canvas, {
        type: "line",
        data: { datasets },
        options: {
          animation: false, maintainAspectRatio: false, parsing: true,
          interaction: { mode: "nearest", axis: "x", intersect: false },
          plugins: {
            legend: {
              position: narrow ? "bottom" : "top",
              labels: { boxWidth: narrow ? 10 : 40, filter: (item, chart) => !chart.datasets[item.datasetIndex].marks },
            },
            tooltip: { callbacks: { footer: (items) => (items.some((it) => it.raw && it.raw.gone) ? "files gone (pruned, rotated out or missing)" : "") } },
          },
          scales: {
            x: {
              type: "linear",
              ticks: { maxTicksLimit: narrow ? 5 : 11, precision: 0, callback: stepLabel },
              title: {
                display: true,
                text: data.shown < data.total ? `step (${data.shown} of ${data.total} checkpoints shown)` : "step",
              },
            },
            size: { position: "left", title: { display: true, text: "size (MB)" }, beginAtZero: true,
                    ticks: { maxTicksLimit: narrow ? 5 : 8 } },
            metric: { position: "right", display: datasets.length > 1, grid: { drawOnChartArea: false },
                      title: { display: !narrow, text: "metric value" }, ticks: { maxTicksLimit: narrow ? 5 : 8 } },
          },
        },
      });
      const note = document.getElementById("history-chart-gone");
      if (note) note.hidden = !gone.some(Boolean);
      const curveNote = document.getElementById("history-chart-curves");
      if (curveNote) curveNote.hidden = totals.length === 0;
    })
    .catch(() => { if (!chart) section.hidden = true; });
  draw();
  document.addEventListener("run:changed", draw);
})();
