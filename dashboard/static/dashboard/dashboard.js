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

// A deployment's page keeps its status, connectors, uptime and history current: every few seconds it
// asks for those parts (rendered by the server's own templates) and swaps in the ones that changed.
// Not while the tab is hidden, and not into a part that holds the focus (until the focus leaves it).
const livePart = document.querySelector("[data-live-url]");
if (livePart) {
  const every = Math.max(2, Number(livePart.dataset.pollSeconds) || 5) * 1000;
  let asking = false;
  const refresh = async () => {
    if (asking || document.hidden) return;
    asking = true;
    try {
      const response = await fetch(livePart.dataset.liveUrl, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (!response.ok) return;
      const data = await response.json();
      for (const [id, html] of Object.entries(data.fragments || {})) {
        const part = document.getElementById(id);
        if (!part || part.contains(document.activeElement)) continue;
        const fresh = document.createElement("template");
        fresh.innerHTML = html;
        // Both serialised by the browser, so equal when nothing changed: a live region is not re-read.
        if (fresh.innerHTML !== part.innerHTML) part.replaceChildren(fresh.content);
      }
      document.body.dataset.liveState = data.state;
    } catch (err) {
      // Offline, or signed out (the answer is the sign-in page): try again next time.
    } finally {
      asking = false;
    }
  };
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
}
