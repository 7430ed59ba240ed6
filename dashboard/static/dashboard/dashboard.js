// Progressive enhancement only: every flow works without this file.
document.documentElement.classList.add("js");

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.innerText.trim();
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    // Clipboard API needs a secure context; fall back to selecting the text for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand && document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "Copied";
  button.setAttribute("aria-live", "polite");
  setTimeout(() => { button.textContent = label; }, 2000);
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.requestSubmit();
});

// A form sent back with errors starts with its error summary: focus it, so that on a phone the page
// opens on the problem (not above the fold of a long form) and a screen reader reads it out.
const errorSummary = document.querySelector("[data-error-summary]");
if (errorSummary) errorSummary.focus();

// A link in the summary focuses its field and brings the field's label into view with it.
document.addEventListener("click", (event) => {
  const link = event.target.closest("[data-error-summary] a[href^='#']");
  if (!link) return;
  const input = document.getElementById(decodeURIComponent(link.hash.slice(1)));
  if (!input) return;
  event.preventDefault();
  (input.closest(".field") || input).scrollIntoView({ block: "start" });
  input.focus({ preventScroll: true });
});
