// Chat: the same message to the base and the finetuned model, both answers streamed side by side.
"use strict";

(function () {
  const $ = id => document.getElementById(id);
  let fresh = true;

  async function loadChatRuns(current) {
    const data = await tunesmith.attempt(() => tunesmith.get("/api/runs"));
    if (!data) return;
    const select = $("chat-run");
    const chosen = current || select.value;
    select.innerHTML = "";
    for (const run of data.runs.filter(r => r.has_model)) {
      select.add(new Option(run.name, run.name, false, run.name === chosen));
    }
  }

  function bubble(box, role, text) {
    const el = document.createElement("div");
    el.className = "bubble " + role;
    el.textContent = text;
    box.appendChild(el);
    box.scrollTop = box.scrollHeight;
    return el;
  }

  // Each SSE frame is "event: NAME\ndata: JSON"; frames end with a blank line.
  function frames(buffer) {
    const parts = buffer.split("\n\n");
    const rest = parts.pop();
    const events = parts.map(part => {
      const event = (part.match(/^event: (.*)$/m) || [])[1] || "message";
      const data = (part.match(/^data: (.*)$/m) || [])[1];
      return {event, data: data ? JSON.parse(data) : null};
    });
    return [events, rest];
  }

  async function ask(which, text, reset) {
    const box = $("chat-" + which);
    bubble(box, "user", text);
    const answer = bubble(box, "assistant pending", "loading the model…");
    answer.dataset.pieces = "0";
    const body = {text, which, reset, system: $("chat-system").value.trim() || null};
    const init = {method: "POST", body: JSON.stringify(body),
      headers: tunesmith.headers({"Content-Type": "application/json", "X-Tunesmith-UI": "1"})};
    const response = await fetch(`/api/runs/${encodeURIComponent($("chat-run").value)}/chat`, init);
    if (!response.ok) {
      const error = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
      answer.textContent = error.error; answer.className = "bubble error";
      return;
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "", pieces = 0, started = false;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      let events;
      [events, buffer] = frames(buffer + decoder.decode(value, {stream: true}));
      for (const {event, data} of events) {
        if (event === "piece") {
          if (!started) { answer.textContent = ""; started = true; }
          answer.textContent += data.text;
          answer.dataset.pieces = String(++pieces);
        } else if (event === "done") {
          answer.classList.remove("pending");
          answer.dataset.done = "1";
          if (!started) answer.textContent = "(empty answer)";
        } else if (event === "error") {
          answer.textContent = data.error; answer.className = "bubble error";
        }
      }
    }
  }

  async function send() {
    const text = $("chat-text").value.trim();
    if (!text || !$("chat-run").value) return;
    $("chat-text").value = "";
    const reset = fresh;
    fresh = false;
    await Promise.all(["base", "finetuned"].map(which => ask(which, text, reset)));
  }

  function newConversation() {
    fresh = true;
    $("chat-base").innerHTML = "";
    $("chat-finetuned").innerHTML = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("chat-send").onclick = send;
    $("chat-reset").onclick = newConversation;
    $("chat-run").onchange = newConversation;
    $("chat-text").addEventListener("keydown", e => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
    });
  });
  window.loadChatRuns = loadChatRuns;
})();
