// Prune preview: kept and deleted checkpoints on a timeline (saved at × step).
// The server thins each series to a bounded number of points, so runs of any length draw at once.
(function () {
  "use strict";
  const canvas = document.getElementById("prune-timeline");
  const source = document.getElementById("prune-timeline-data");
  if (!canvas || !source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  // Ticks as precise as the span needs: seconds for a quick run, dates for a long one.
  const all = data.kept.concat(data.deleted).map(([x]) => x);
  const span = all.length ? Math.max(...all) - Math.min(...all) : 0;
  const [from, to] = span < 2 * 3600e3 ? [11, 19] : span < 3 * 86400e3 ? [5, 16] : [0, 10];
  const when = (ms) => new Date(ms).toISOString().replace("T", " ").slice(from, to);
  const exact = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  const points = (pairs) => pairs.map(([x, y]) => ({ x, y }));
  const label = (name, key) =>
    data[key].length < data.total[key] ? `${name} (${data.total[key]}, ${data[key].length} shown)` : `${name} (${data.total[key]})`;
  new Chart(canvas, {
    type: "scatter",
    data: {
      datasets: [
        { label: label("kept", "kept"), data: points(data.kept), backgroundColor: "#12b76a", borderColor: "#12b76a", pointRadius: 3 },
        { label: label("deleted", "deleted"), data: points(data.deleted), backgroundColor: "#f04438", borderColor: "#f04438",
          pointRadius: 3, pointStyle: "crossRot" },
      ],
    },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: {
        x: { type: "linear", title: { display: true, text: "saved at (UTC)" }, ticks: { callback: (v) => when(v), maxTicksLimit: 6 } },
        y: { title: { display: true, text: "step" } },
      },
      plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label.split(" ")[0]}: step ${ctx.parsed.y} · ${exact(ctx.parsed.x)} UTC` } } },
    },
  });
})();
