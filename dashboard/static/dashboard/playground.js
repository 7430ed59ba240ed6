// The playground page: a chat with a deployment through the real /v1 API, streamed.
// The secret comes from a POST to the page's key URL (made or rotated for this user) and is kept in
// this tab's sessionStorage for this org only. Replies are written as text (textContent), never HTML.
(() => {
  const root = document.querySelector("[data-playground]");
  if (!root) return;
  const form = document.getElementById("playground-form");
  const model = document.getElementById("pg-model");
  const maxTokens = document.getElementById("pg-max-tokens");
  const message = document.getElementById("pg-message");
  const send = document.getElementById("pg-send");
  const stop = document.getElementById("pg-stop");
  const clear = document.getElementById("pg-clear");
  const transcript = document.getElementById("pg-transcript");
  const status = document.getElementById("pg-status");
  const error = document.getElementById("pg-error");
  const result = document.getElementById("pg-result");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const storageKey = `tokios-playground-key:${root.dataset.org}`;
  const MAX_TOKENS = 4096;
  let history = [];
  let controller = null;

  // Shown by this script (it needs it); the message box takes the focus, as a form page's first field does.
  form.hidden = false;
  if (document.activeElement === document.body || !document.activeElement) message.focus();

  // The snippets name the model picked here.
  const showModel = () => {
    for (const slot of document.querySelectorAll("[data-snippet-model]")) slot.textContent = model.value;
  };
  model.addEventListener("change", showModel);
  showModel();

  const say = (text) => { status.textContent = text; };
  const fail = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };

  class Refused extends Error {}

  const stored = () => {
    try { return sessionStorage.getItem(storageKey); } catch (err) { return null; }
  };

  // A new secret from the server (the key is made on the first ask, rotated on every later one).
  const freshSecret = async () => {
    const response = await fetch(root.dataset.keyUrl, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      body: new URLSearchParams({ org: root.dataset.org }),
    });
    let data = {};
    try { data = await response.json(); } catch (err) { /* an HTML page: CSRF or sign-in */ }
    if (!response.ok || !data.secret) {
      throw new Refused(data.error || `Could not get a playground key (HTTP ${response.status}): reload the page and sign in again if asked.`);
    }
    try { sessionStorage.setItem(storageKey, data.secret); } catch (err) { /* private mode: kept for this call only */ }
    const keyLine = document.getElementById("pg-key");
    if (keyLine) keyLine.textContent = `${data.name} (${data.prefix}…, ${data.status}).`;
    return data.secret;
  };

  const errorText = (statusCode, body, headers) => {
    const detail = (body && body.error && (body.error.message || body.error)) || "";
    const code = (body && body.error && body.error.code) || "";
    const said = typeof detail === "string" && detail ? ` (${detail})` : "";
    if (statusCode === 401 && code === "key_paused") return `Your playground key is paused by an owner or admin${said}.`;
    if (statusCode === 401) return `The playground key was refused${said}.`;
    if (statusCode === 403) return `This key may not use this model${said}.`;
    if (statusCode === 404) return `No such model: it was deleted or is no longer shared with this organisation${said}.`;
    if (statusCode === 429) {
      const wait = Number(headers.get("retry-after"));
      const when = Number.isFinite(wait) && wait > 0 ? ` Try again in ${Math.ceil(wait)} s.` : "";
      return `A rate limit or budget was reached${said}.${when}`;
    }
    if (statusCode === 503 && code === "deployment_disabled") return `This deployment is disabled by its owner${said}.`;
    if (statusCode === 503) return `The model is not reachable: no connector is online for it, or all are busy${said}.`;
    if (statusCode === 400 || statusCode === 413) return `The request was refused${said}.`;
    return `The server answered ${statusCode}${said}.`;
  };

  const turn = (role, text) => {
    const item = document.createElement("div");
    item.className = `turn turn-${role}`;
    const who = document.createElement("p");
    who.className = "turn-who";
    who.textContent = role === "user" ? "You" : model.value;
    const body = document.createElement("p");
    body.className = "turn-text";
    body.textContent = text;
    item.append(who, body);
    transcript.append(item);
    transcript.hidden = false;
    return body;
  };

  const showResult = (response, usage, finish) => {
    document.getElementById("pg-result-model").textContent = model.value;
    const requestCell = document.getElementById("pg-result-request");
    requestCell.replaceChildren();
    const requestId = response.headers.get("x-request-id") || "";
    if (/^[A-Za-z0-9_]{1,64}$/.test(requestId)) {
      const link = document.createElement("a");
      link.href = `${root.dataset.requestsUrl}${requestId}/`;
      link.textContent = requestId;
      requestCell.append(link);
    } else {
      requestCell.textContent = "—";
    }
    document.getElementById("pg-result-tokens").textContent = usage
      ? `${usage.prompt_tokens} in, ${usage.completion_tokens} out`
      : "not reported";
    document.getElementById("pg-result-finish").textContent = finish || "—";
    result.hidden = false;
  };

  const call = (secret, body, signal) => fetch(root.dataset.chatUrl, {
    method: "POST",
    credentials: "omit",
    cache: "no-store",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  });

  // Read the event stream, appending each delta's text to `output` as it comes.
  const readStream = async (response, output) => {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let text = "";
    let usage = null;
    let finish = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim()).join("\n");
        if (!data || data === "[DONE]") continue;
        let chunk;
        try { chunk = JSON.parse(data); } catch (err) { continue; }
        if (chunk.error) throw new Refused(`The reply was cut short: ${chunk.error.message || "an error upstream"}.`);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const piece = choice.delta && typeof choice.delta.content === "string" ? choice.delta.content : "";
          if (piece) {
            text += piece;
            output.textContent = text;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    return { text, usage, finish };
  };

  const busy = (on) => {
    send.disabled = on;
    stop.disabled = !on;
    clear.disabled = on;
    transcript.setAttribute("aria-busy", on ? "true" : "false");
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const content = message.value.trim();
    fail("");
    if (!content) {
      fail("Write a message first.");
      message.focus();
      return;
    }
    const limit = Math.trunc(Number(maxTokens.value));
    if (!(limit >= 1 && limit <= MAX_TOKENS)) {
      fail(`The longest reply is 1 to ${MAX_TOKENS} tokens.`);
      maxTokens.focus();
      return;
    }
    const asked = [...history, { role: "user", content }];
    const body = { model: model.value, messages: asked, max_tokens: limit, stream: true, stream_options: { include_usage: true } };
    result.hidden = true;
    const asking = turn("user", content).parentElement;
    const output = turn("assistant", "");
    controller = new AbortController();
    busy(true);
    say("Asking for a key…");
    let text = "";
    try {
      let secret = stored();
      const wasStored = Boolean(secret);
      if (!secret) secret = await freshSecret();
      say("Waiting for the model…");
      let response = await call(secret, body, controller.signal);
      if (response.status === 401 && wasStored) {
        // The stored secret was replaced (another tab) or the key revoked: ask once for a new one.
        secret = await freshSecret();
        response = await call(secret, body, controller.signal);
      }
      if (!response.ok) {
        let answer = null;
        try { answer = await response.json(); } catch (err) { /* not JSON */ }
        throw new Refused(errorText(response.status, answer, response.headers));
      }
      say("Answering…");
      const streamed = await readStream(response, output);
      text = streamed.text;
      history = [...asked, { role: "assistant", content: text }];
      message.value = "";
      showResult(response, streamed.usage, streamed.finish);
      say("Reply complete.");
    } catch (err) {
      if (err.name === "AbortError") {
        say("Stopped.");
        text = output.textContent;
        if (text) history = [...asked, { role: "assistant", content: text }];
      } else {
        say("");
        fail(err instanceof Refused ? err.message : "The request failed: the server could not be reached.");
      }
      if (!output.textContent) {
        output.parentElement.remove();
        if (err.name !== "AbortError") asking.remove(); // unanswered: the message stays in the box to send again
        transcript.hidden = !transcript.childElementCount;
      }
    } finally {
      controller = null;
      busy(false);
    }
  });

  stop.addEventListener("click", () => { if (controller) controller.abort(); });

  clear.addEventListener("click", () => {
    history = [];
    transcript.replaceChildren();
    transcript.hidden = true;
    result.hidden = true;
    fail("");
    say("");
    message.focus();
  });
})();
