// Forms that delete or repoint something ask first: <form data-confirm="question">.
// A listener in a static file, not an onsubmit attribute, which the Content-Security-Policy refuses.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
}, true);
