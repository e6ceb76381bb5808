// The run page keeps itself current while a trainer writes checkpoints: every second it asks the
// run's change stamp (a 204 while nothing changed); when the stamp moves it re-renders the summary
// and history from the server's partials, in place, and tells the chart to fetch its data again.
// Nothing is reloaded, and the full page is never polled. Polling pauses while the tab is hidden.
(function () {
  "use strict";
  const root = document.getElementById("run-live");
  if (!root || !window.fetch) return;
  const INTERVAL_MS = 1000;
  const BACKOFF_MS = 5000;
  let stamp = root.dataset.stamp || "";
  let timer = null;

  const schedule = (ms) => {
    clearTimeout(timer);
    if (!document.hidden) timer = setTimeout(poll, ms);
  };

  // Someone typing a pin reason or with a pin form open keeps the rows as they are until done.
  const busy = (region) => {
    const focused = document.activeElement;
    return (focused && region.contains(focused) && focused.matches("input[type=text], textarea, select"))
      || region.querySelector("details[open]") !== null;
  };

  const refresh = () => {
    const url = root.dataset.live + window.location.search;
    return fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "X-Requested-With": "fetch" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        const fresh = new DOMParser().parseFromString(html, "text/html");
        let deferred = false;
        root.querySelectorAll("[data-live-region]").forEach((region) => {
          const replacement = fresh.getElementById(region.id);
          if (!replacement) return;
          if (busy(region)) { deferred = true; return; }
          // Rows ticked for comparing stay ticked.
          const ticked = new Set(Array.from(region.querySelectorAll("input[type=checkbox]:checked"), (box) => box.value));
          region.replaceWith(document.importNode(replacement, true));
          ticked.forEach((value) => {
            const box = document.querySelector(`#${region.id} input[type=checkbox][value="${CSS.escape(value)}"]`);
            if (box) box.checked = true;
          });
        });
        const freshRoot = fresh.getElementById("run-live");
        if (!deferred && freshRoot) stamp = freshRoot.dataset.stamp || stamp;
        document.dispatchEvent(new CustomEvent("run:changed"));
        if (window.htmx) window.htmx.process(root);
      });
  };

  const poll = () => {
    const url = root.dataset.changes + "?since=" + encodeURIComponent(stamp);
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then((r) => {
        if (r.status === 204) return null;
        if (!r.ok) return Promise.reject(r.status);
        return r.json();
      })
      .then((data) => (data && data.stamp !== stamp ? refresh() : null))
      .then(() => schedule(INTERVAL_MS))
      .catch(() => schedule(BACKOFF_MS));
  };

  document.addEventListener("visibilitychange", () => schedule(document.hidden ? BACKOFF_MS : 0));
  schedule(INTERVAL_MS);
})();
