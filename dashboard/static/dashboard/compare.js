// Compare pages: the relative-change bar chart, starting a comparison on opening the page, and
// the history table's "tick two rows" helper. Everything also works without this script: the
// table holds the chart's numbers, the start form has a button, the server checks the ticks.
(function () {
  "use strict";

  // An operator opening a pair that has no up-to-date comparison: start it right away (a normal
  // POST with its CSRF token; the server refuses viewers and never starts a second job).
  const autostart = document.querySelector("form[data-autostart]");
  if (autostart) {
    const button = autostart.querySelector("button");
    if (button) button.disabled = true;
    autostart.submit();
  }

  // Relative change per variable, largest first, as horizontal bars.
  const canvas = document.getElementById("compare-chart");
  const source = document.getElementById("compare-chart-data");
  if (canvas && source && typeof Chart !== "undefined") {
    // One readable bar per variable: the page gives the height; set here, not in a style
    // attribute, which the Content-Security-Policy refuses.
    const figure = canvas.closest("figure[data-height]");
    if (figure) figure.style.height = `${Number(figure.dataset.height)}px`;
    const data = JSON.parse(source.textContent);
    const colors = data.changed.map((changed) => (changed ? "#f79009" : "#98a2b3"));
    const chart = new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: [{ label: "relative change", data: data.values, backgroundColor: colors, borderWidth: 0 }],
      },
      options: {
        indexAxis: "y",
        animation: false,
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (item) => `relative change ${Number(item.raw).toPrecision(4)}` } },
        },
        scales: {
          x: { type: "linear", beginAtZero: true, title: { display: true, text: "‖B − A‖ / ‖A‖" } },
          y: { ticks: { autoSkip: false, font: { family: "monospace", size: 11 } } },
        },
      },
    });
    // Relative changes span orders of magnitude (a bias moving 50 % next to a frozen embedding):
    // a log scale shows both. Zeros cannot be drawn on it and simply have no bar.
    const log = document.getElementById("compare-chart-log");
    if (log) {
      log.addEventListener("change", () => {
        chart.options.scales.x = log.checked
          ? { type: "logarithmic", title: chart.options.scales.x.title }
          : { type: "linear", beginAtZero: true, title: chart.options.scales.x.title };
        chart.update();
      });
    }
  }

  // Switches that change what the page shows apply at once (the Filter button does the same).
  document.querySelectorAll("input[data-submit-on-change]").forEach((input) => {
    input.addEventListener("change", () => input.form && input.form.requestSubmit());
  });

  // History table: at most two ticks; the Compare button says how many are ticked. Set up again
  // when the live refresh (live.js) has re-rendered the rows.
  const setUpTicks = () => {
    const form = document.getElementById("compare-form");
    if (!form) return;
    // The checkboxes sit in the table and join the form through their form="compare-form".
    const boxes = Array.from(document.querySelectorAll('input[type="checkbox"][form="compare-form"]'));
    const button = form.querySelector("button[data-compare]");
    const update = () => {
      const ticked = boxes.filter((b) => b.checked).length;
      boxes.forEach((b) => { b.disabled = !b.checked && ticked >= 2; });
      if (button) {
        // One tick is fine too: the server then asks for the other side on the pick page.
        button.disabled = ticked === 0;
        button.textContent = ["Compare (tick two rows)", "Compare with…", "Compare the two ticked"][ticked];
      }
    };
    boxes.forEach((b) => b.addEventListener("change", update));
    update();
  };
  setUpTicks();
  document.addEventListener("run:changed", setUpTicks);
})();
