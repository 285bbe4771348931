// tunesmith ui: the Runs, New run and Compare pages (chat.js has Chat). No framework, no build step.
"use strict";

const $ = id => document.getElementById(id);
const ui = {token: null, info: null, current: null, source: null, metrics: [], runs: []};

// ---- requests -------------------------------------------------------------------------------------------------

function readToken() {
  const query = new URLSearchParams(location.search).get("token");
  if (query) sessionStorage.setItem("tunesmith-token", query);
  ui.token = query || sessionStorage.getItem("tunesmith-token");
}

function withToken(url) {
  if (!ui.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(ui.token);
}

function headers(extra = {}) {
  const h = {...extra};
  if (ui.token) h["X-Tunesmith-Token"] = ui.token;
  return h;
}

async function request(method, url, body, contentType = "application/json") {
  const init = {method, headers: headers()};
  if (method === "POST") {
    init.headers["X-Tunesmith-UI"] = "1";
    init.headers["Content-Type"] = contentType;
    init.body = contentType === "application/json" ? JSON.stringify(body || {}) : body;
  }
  const response = await fetch(url, init);
  if (response.status === 401) $("token-box").classList.remove("hidden");
  const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}
const get = url => request("GET", url);
const post = (url, body) => request("POST", url, body);

function show(text, isError = true) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "note";
  if (!text) box.className = "hidden";
}

async function attempt(fn) {
  try { show(""); return await fn(); } catch (e) { show(e.message); return undefined; }
}

function cell(row, text, tag = "td") {
  const el = document.createElement(tag);
  el.textContent = text ?? "–";
  row.appendChild(el);
  return el;
}

function fillTable(table, header, rows) {
  const [thead, tbody] = [table.tHead, table.tBodies[0]];
  thead.innerHTML = ""; tbody.innerHTML = "";
  const tr = thead.insertRow();
  header.forEach(h => cell(tr, h, "th"));
  rows.forEach(r => { const row = tbody.insertRow(); r.forEach(v => cell(row, v)); });
}

function tabTo(name) {
  document.querySelectorAll(".page").forEach(p => p.classList.toggle("hidden", p.id !== name));
  document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t.dataset.tab === name));
  if (name === "runs") loadRuns();
  if (name === "new") loadDataFiles();
  if (name === "compare") loadCompareChoices();
  if (name === "chat") window.loadChatRuns && window.loadChatRuns(ui.current);
}

// ---- runs -----------------------------------------------------------------------------------------------------

const fmt = (v, digits = 4) => (v === null || v === undefined) ? "–" :
  typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(digits)) : String(v);

function eta(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round(s % 3600 / 60)} min` :
    s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

async function loadRuns() {
  const data = await attempt(() => get("/api/runs"));
  if (!data) return;
  ui.runs = data.runs;
  const extra = data.header.filter(h => !["run", "test_loss"].includes(h));
  const header = ["run", "state", "step", "best test loss", ...extra];
  const table = $("runs-table");
  fillTable(table, header, []);
  const tbody = table.tBodies[0];
  for (const run of data.runs) {
    const row = tbody.insertRow();
    row.dataset.run = run.name;
    const link = cell(row, run.name);
    link.className = "link";
    link.onclick = () => openRun(run.name);
    cell(row, "").className = "state";
    cell(row, "");
    cell(row, "");
    extra.forEach(h => cell(row, run.cells[h]));
    updateRow(run);
  }
  $("runs-empty").classList.toggle("hidden", data.runs.length > 0);
}

function updateRow(run) {
  const row = document.querySelector(`#runs-table tr[data-run="${CSS.escape(run.name)}"]`);
  if (!row) return;
  const [, state, step, best] = row.cells;
  state.textContent = run.state;
  state.className = "state " + run.state;
  step.textContent = run.total_steps ? `${run.step} / ${run.total_steps}` : String(run.step);
  best.textContent = fmt(run.best_test_loss ?? (run.cells || {}).test_loss);
}

function showStatus(run) {
  $("run-state").textContent = run.state;
  $("run-state").className = "state " + run.state;
  $("run-step").textContent = run.step;
  $("run-total").textContent = run.total_steps ?? "?";
  $("run-loss").textContent = fmt(run.loss);
  $("run-lr").textContent = run.lr === null || run.lr === undefined ? "–" : run.lr.toExponential(2);
  $("run-tps").textContent = run.tokens_per_s ? Math.round(run.tokens_per_s) : "–";
  $("run-eta").textContent = run.state === "running" ? eta(run.eta_s) : "–";
  $("run-best").textContent = fmt(run.best_test_loss);
  const active = ["starting", "running", "stopping"].includes(run.state);
  $("stop-btn").disabled = run.state !== "running" && run.state !== "starting";
  $("resume-btn").disabled = active || run.state === "finished";
  $("report-btn").disabled = active && !run.has_report;
  $("chat-btn").disabled = !run.has_model;
  const error = $("run-error");
  const failed = run.state === "failed";
  error.textContent = failed ? [run.error || "training failed", "", ...(run.log_tail || [])].join("\n") : "";
  error.classList.toggle("hidden", !failed);
}

function drawRunChart() {
  const train = ui.metrics.filter(m => m.loss !== undefined).map(m => [m.step, m.loss]);
  const test = ui.metrics.filter(m => m.test_loss !== undefined).map(m => [m.step, m.test_loss]);
  const series = [{name: "train loss", points: train}];
  if (test.length) series.push({name: "test loss", points: test, dashed: true, dots: true});
  drawChart($("loss-chart"), series);
}

function follow(name) {
  if (ui.source) ui.source.close();
  const source = new EventSource(withToken(`/api/runs/${encodeURIComponent(name)}/events`));
  ui.source = source;
  source.addEventListener("reset", () => { ui.metrics = []; drawRunChart(); });
  source.addEventListener("metrics", e => { ui.metrics.push(...JSON.parse(e.data)); drawRunChart(); });
  source.addEventListener("status", e => { const run = JSON.parse(e.data); showStatus(run); updateRow(run); });
  source.addEventListener("end", () => { source.close(); if (ui.source === source) ui.source = null; loadRuns(); });
}

async function openRun(name) {
  ui.current = name;
  ui.metrics = [];
  $("run-detail").classList.remove("hidden");
  $("run-name").textContent = name;
  drawRunChart();
  const run = await attempt(() => get(`/api/runs/${encodeURIComponent(name)}`));
  if (run) showStatus(run);
  follow(name);
}

async function runAction(action) {
  const name = ui.current;
  const done = await attempt(() => post(`/api/runs/${encodeURIComponent(name)}/${action}`));
  if (!done) return;
  if (action === "stop") show("Stopping: the current step finishes and a checkpoint is written…", false);
  if (action === "resume") show("Resuming from the latest checkpoint…", false);
  await openRun(name);
  loadRuns();
}

async function openReport() {
  // opened now, while the click counts as the user's: a window opened after the build would be a blocked popup
  const win = window.open("about:blank", "_blank");
  const name = ui.current;
  const built = await attempt(() => post(`/api/runs/${encodeURIComponent(name)}/report`));
  if (built && win) win.location = withToken(built.url);
  else if (win) win.close();
}

// ---- new run --------------------------------------------------------------------------------------------------

async function loadDataFiles(selected) {
  const data = await attempt(() => get("/api/data"));
  if (!data) return;
  const select = $("new-data");
  select.innerHTML = "";
  for (const file of data.files) select.add(new Option(file, file, false, file === selected));
  ui.maxUpload = data.max_upload_bytes;
}

async function upload(input) {
  const file = input.files[0];
  if (!file) return;
  if (ui.maxUpload && file.size > ui.maxUpload) {
    show(`${file.name} is ${file.size.toLocaleString()} bytes; ` +
         `uploads are limited to ${ui.maxUpload.toLocaleString()}`);
    return;
  }
  const saved = await attempt(() => request("POST", "/api/upload?name=" + encodeURIComponent(file.name), file,
                                            "application/octet-stream"));
  if (saved) { await loadDataFiles(saved.path); show(`uploaded as ${saved.path}`, false); }
}

function describeInspection(r, path) {
  const s = r.stats, lines = [];
  lines.push(`${path}: ${s.num_records} records, shape ${r.shape} (${r.reason})`);
  lines.push(`tokens with model ${r.model} and template ${r.template}:`);
  for (const [part, l] of Object.entries(s.lengths || {})) {
    lines.push(`  ${part}: median ${l.median}, p95 ${l.p95}, max ${l.max}`);
  }
  if (s.truncation) lines.push(`max_length ${s.truncation.max_length} (${r.max_length_source}): ` +
    `${s.truncation.examples_truncated} examples truncated`);
  lines.push(`invalid records: ${r.skipped_count}` + (r.skipped.length ? "\n  " + r.skipped.join("\n  ") : ""));
  lines.push(`duplicates: ${s.duplicates.exact} exact, ${s.duplicates.conflicting_prompts} conflicting prompts`);
  lines.push(`baked-in templates: ${s.baked_templates.records} records` +
    (s.baked_templates.records ? ` (${Object.keys(s.baked_templates.markers).join(", ")})` : ""));
  return lines.join("\n");
}

async function inspectData() {
  const out = $("inspect-out");
  out.textContent = "inspecting…";
  const model = $("new-model").value.trim(), path = $("new-data").value;
  const query = "path=" + encodeURIComponent(path) + (model ? "&model=" + encodeURIComponent(model) : "");
  const result = await attempt(() => get("/api/data/inspect?" + query));
  out.textContent = result ? describeInspection(result, path) : "";
}

async function startRun() {
  const number = id => $(id).value === "" ? null : Number($(id).value);
  const form = {data: $("new-data").value, model: $("new-model").value.trim() || null,
    method: $("new-method").value, epochs: number("new-epochs"), max_steps: number("new-max-steps"),
    name: $("new-name").value.trim() || null,
    settings: $("new-settings").value.split("\n").map(s => s.trim()).filter(Boolean)};
  const started = await attempt(() => post("/api/runs", form));
  if (!started) return;
  tabTo("runs");
  await openRun(started.name);
}

// ---- compare --------------------------------------------------------------------------------------------------

async function loadCompareChoices() {
  const data = await attempt(() => get("/api/runs"));
  if (!data) return;
  const box = $("compare-choices");
  box.innerHTML = "";
  for (const run of data.runs) {
    const label = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox"; check.value = run.name; check.checked = true;
    label.append(check, " " + run.name);
    box.appendChild(label);
  }
}

async function compareRuns() {
  const chosen = [...$("compare-choices").querySelectorAll("input:checked")].map(c => c.value);
  const query = chosen.map(n => "run=" + encodeURIComponent(n)).join("&");
  const data = await attempt(() => get("/api/compare?" + query));
  if (!data) return;
  fillTable($("compare-table"), data.header, data.rows);
  drawChart($("compare-chart"), Object.entries(data.curves).map(([name, points]) => ({name, points})));
}

// ---- start ----------------------------------------------------------------------------------------------------

async function start() {
  readToken();
  document.querySelectorAll(".tab").forEach(t => t.onclick = () => tabTo(t.dataset.tab));
  $("token-save").onclick = () => {
    ui.token = $("token-input").value;
    sessionStorage.setItem("tunesmith-token", ui.token);
    $("token-box").classList.add("hidden");
    start();
  };
  $("stop-btn").onclick = () => runAction("stop");
  $("resume-btn").onclick = () => runAction("resume");
  $("report-btn").onclick = openReport;
  $("chat-btn").onclick = () => tabTo("chat");
  $("upload-input").onchange = e => upload(e.target);
  $("inspect-btn").onclick = inspectData;
  $("start-btn").onclick = startRun;
  $("compare-btn").onclick = compareRuns;
  ui.info = await attempt(() => get("/api/info"));
  if (!ui.info) return;
  $("folders").textContent = `runs: ${ui.info.runs_dir} · data: ${ui.info.work_dir}`;
  $("new-model").placeholder = ui.info.default_model;
  $("new-epochs").placeholder = ui.info.default_epochs;
  await loadRuns();
  const first = ui.runs.find(r => ["running", "starting"].includes(r.state)) || ui.runs[ui.runs.length - 1];
  if (first && !ui.current) openRun(first.name);
}

window.tunesmith = {ui, get, request, withToken, show, attempt, headers};
document.addEventListener("DOMContentLoaded", start);
