// A select with data-autosubmit submits its form when changed; the only script the pages use.
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
