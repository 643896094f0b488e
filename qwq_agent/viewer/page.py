"""The viewer's single page: HTML, CSS and JavaScript inline, so it works with no network at all."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qwq-agent traces</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:10px 18px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:16px;margin:0} header a{color:#9cc4ff;text-decoration:none} main{padding:14px 18px}
table{border-collapse:collapse;width:100%;background:#fff} th,td{padding:5px 8px;border-bottom:1px solid #e3e6ea;text-align:left}
th{font-weight:600;background:#eef0f3} tr.run{cursor:pointer} tr.run:hover{background:#eef5ff}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{padding:1px 7px;border-radius:9px;font-size:12px;background:#e3e6ea}
.status.completed{background:#d4f3dc}.status.running{background:#ffefc2}.status.awaiting_approval{background:#ffe0b3}
.status.error,.status.budget_exceeded,.status.truncated_answer,.status.reasoning_loop,.status.tool_call_in_reasoning,.status.model_error,.status.context_full,.status.recording_ended,.status.interrupted,.status.cancelled,.status.timeout,.status.unreadable,.status.cut_short{background:#ffd6d6}
.step{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:10px 0;padding:8px 12px}
.step h3{margin:0 0 6px;font-size:14px;display:flex;gap:14px;flex-wrap:wrap}
.metrics{font-weight:400;color:#5a6470;font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font:12.5px/1.4 ui-monospace,monospace}
details.reasoning{color:#5a6470;background:#f7f8fa;border-radius:4px;padding:2px 8px;margin:4px 0}
details.reasoning summary{cursor:pointer;font-style:italic}
.content{margin:4px 0}
.tool-call{border-left:3px solid #3b82f6;padding:2px 8px;margin:6px 0;background:#f1f6ff}
.tool-result{border-left:3px solid #10b981;padding:2px 8px;margin:6px 0;background:#f0fbf6}
.tool-result.error{border-left-color:#ef4444;background:#fff3f3}
.tool-image{max-width:520px;max-height:340px;display:block;margin:4px 0;border:1px solid #dde1e6}
.warning{border-left:3px solid #f59e0b;background:#fff8e6;padding:4px 8px;margin:6px 0}
.warning.loop{border-left-color:#dc2626;background:#ffecec;font-weight:600}
.approval{border-left:3px solid #8b5cf6;background:#f5f0ff;padding:4px 8px;margin:6px 0}
.final{background:#1d232a;color:#fff;border-radius:6px;padding:8px 12px;margin:10px 0}
.label{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:#5a6470;margin-right:6px}
.final .label{color:#aab4bf} #live{color:#f59e0b;font-weight:600} .muted{color:#5a6470}
</style></head>
<body><header><h1><a href="#">qwq-agent traces</a></h1><span id="where" class="muted"></span><span id="live"></span></header>
<main><div id="list"><table id="runs"><thead><tr><th>run</th><th>task</th><th>status</th><th>steps</th>
<th>tokens (prompt / generated)</th><th>cached</th><th>time</th><th>warnings</th></tr></thead><tbody></tbody></table></div>
<div id="run" hidden><div id="summary"></div><div id="timeline"></div></div></main>
<script>
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
// Markup is only ever built with the `html` tag: each value it interpolates is escaped unless it is
// markup `html` made itself (or an array of such), so no trace field, whatever its type, becomes markup.
class Markup { constructor(s) { this.s = s; } toString() { return this.s; } }
const part = (v) => v instanceof Markup ? v.s : Array.isArray(v) ? v.map(part).join("") : esc(v);
const html = (strings, ...values) => new Markup(strings.reduce((out, s, i) => out + part(values[i - 1]) + s));
const joined = (items, sep) => new Markup(items.map(part).join(esc(sep)));
const setHTML = (el, markup) => { el.innerHTML = part(markup); };
const num = (n) => { const x = Number(n ?? 0); return Number.isFinite(x) ? x.toLocaleString("en") : String(n); };
const pct = (x) => x == null || !Number.isFinite(Number(x)) ? "–" : (100 * x).toFixed(1) + "%";
const secs = (x) => x == null || !Number.isFinite(Number(x)) ? "–" : (x < 1 ? (1000 * x).toFixed(0) + " ms" : Number(x).toFixed(2) + " s");
const list = (v) => Array.isArray(v) ? v.join(", ") : v;
const LOOP = /loop|repeat|identical|same_call/;
let current = null, timer = null;

// Arguments one per line, strings as written (code reads as code, not as an escaped JSON string).
function args(a) { return Object.entries(a || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("\n"); }

function statusBadge(s) { return html`<span class="status ${s}">${s}</span>`; }

async function getJSON(url) { const r = await fetch(url, {cache: "no-store"}); return r.json(); }

async function showList() {
  stopPolling(); current = null; $("#run").hidden = true; $("#list").hidden = false; $("#live").textContent = "";
  let data;
  try {
    data = await getJSON("/api/runs");
  } catch (e) {  // as in poll(): a failed refresh must not end the refreshing
    if (location.hash === "" || location.hash === "#") {
      $("#live").textContent = "viewer unreachable · retrying in 3 s";
      timer = setTimeout(showList, 3000);
    }
    return;
  }
  $("#where").textContent = data.root;
  setHTML($("#runs tbody"), data.runs.map((r) => html`<tr class="run" data-file="${r.file}" data-ref="${r.ref}">
    <td>${r.file}</td><td>${String(r.task || "").slice(0, 90)}</td><td title="${r.note || ""}">${statusBadge(r.status)}</td>
    <td class="num">${r.steps}</td><td class="num">${num(r.prompt_tokens)} / ${num(r.generated_tokens)}</td>
    <td class="num">${pct(r.cached_share)}</td><td class="num">${secs(r.wall_s)}</td><td class="num">${r.warnings}</td></tr>`));
  document.querySelectorAll("tr.run").forEach((tr) => tr.addEventListener("click", () => {
    location.hash = "run=" + tr.dataset.ref; }));
  if (location.hash === "" || location.hash === "#") timer = setTimeout(showList, 3000);
}

function stopPolling() { if (timer) clearTimeout(timer); timer = null; }

// A run is named by its `ref`: its path's bytes percent-encoded (not every file name is UTF-8, so not
// every one can be decoded in the page and encoded again). One typed into the address keeps its %XX
// and has the rest encoded.
const refOf = (s) => s.replace(/[^A-Za-z0-9%._~\/-]/g, encodeURIComponent);

async function showRun(ref) {
  stopPolling();
  current = {ref: refOf(ref), events: [], next: 0, stale: false, open: new Set(), failures: 0};
  $("#list").hidden = true; $("#run").hidden = false; $("#timeline").innerHTML = "";
  await poll();
}

async function poll() {
  const run = current; if (!run) return;
  let data;
  try {
    data = await getJSON(`/api/events?file=${run.ref}&from=${encodeURIComponent(run.next)}`);
  } catch (e) {
    // The viewer restarted, the connection was reset, the answer was cut: an uncaught rejection would
    // end the polling for good under a header still saying live. Say so, and ask again, less often.
    if (run !== current) return;
    const wait = Math.min(1000 * 2 ** run.failures, 8000); run.failures += 1;
    $("#live").textContent = `viewer unreachable · retrying in ${wait / 1000} s`;
    timer = setTimeout(poll, wait);
    return;
  }
  if (run !== current) return;
  run.failures = 0;
  if (data.error) { setHTML($("#summary"), html`<p>${data.error}</p>`); return; }
  // `reset`: the file at this name is not the one read so far (written again, truncated): what the
  // page holds is of another run, and this answer starts from the beginning.
  if (data.reset) run.events = [];
  run.events.push(...data.events); run.next = data.next;
  run.stale = run.stale || data.reset || data.events.length > 0;
  const s = data.summary;
  setHTML($("#summary"), html`<h2>${s.task}</h2><p>${statusBadge(s.status)} ${s.note ? html`${s.note} · ` : ""}<span class="muted">${s.file} · run ${s.run_id} · ${s.model}
    · ${s.steps} steps · ${num(s.prompt_tokens)} prompt tokens (${pct(s.cached_share)} cached) · ${num(s.generated_tokens)} generated · ${secs(s.wall_s)}</span></p>`);
  // A long trace comes a page at a time: the next is asked for at once, and the timeline is drawn
  // when the last has come (drawing it per page would redraw a long run many times over).
  if (data.more) { $("#live").textContent = `loading · ${num(run.events.length)} events`; timer = setTimeout(poll, 0); return; }
  if (run.stale) { render(run); run.stale = false; }
  const live = s.status === "running";
  $("#live").textContent = live ? "● live" : "";
  if (live) timer = setTimeout(poll, 1000);
}

function stepsOf(events) {
  const steps = new Map(), order = [];
  const get = (n) => { if (!steps.has(n)) { steps.set(n, {n, items: [], calls: []}); order.push(n); } return steps.get(n); };
  for (const ev of events) {
    const st = get(ev.step || 0), last = st.items[st.items.length - 1];
    if ((ev.type === "reasoning" || ev.type === "content") && last && last.type === ev.type && !last.key) { last.text += ev.text; continue; }
    if (ev.type === "reasoning" || ev.type === "content") { st.items.push({type: ev.type, text: ev.text, key: `${st.n}-d`}); continue; }
    if (ev.type === "model_call" && ev.probe) continue;  // a side request: its answer is not the turn's
    if (ev.type === "model_call") {
      // The trace holds each model call's whole output: reasoning up to </think>, then the answer
      // (tool calls are shown from their own events).
      st.calls.push(ev);
      const text = String(ev.prefix || "") + String(ev.completion || ""), cut = text.indexOf("</think>");
      const reasoning = cut < 0 ? text : text.slice(0, cut);
      const content = cut < 0 ? "" : text.slice(cut + 8).replace(/<tool_call>[\s\S]*?(<\/tool_call>|$)/g, "");
      if (reasoning.trim()) st.items.push({type: "reasoning", text: reasoning.trim(), key: `${st.n}-${st.calls.length}`});
      if (content.trim()) st.items.push({type: "content", text: content});
      continue;
    }
    if (ev.type === "usage") continue;
    st.items.push(ev);
  }
  return order.map((n) => steps.get(n));
}

function item(ev, st, run) {
  switch (ev.type) {
    case "run_started": return html`<div class="muted"><span class="label">started</span>tools: ${list(ev.tools)}${ev.replay_of ? html` · ${ev.replay_of.mode} of ${ev.replay_of.path}` : ""}</div>`;
    case "reasoning": {
      const text = String(ev.text ?? "");
      return html`<details class="reasoning" data-key="${ev.key}"${run.open.has(ev.key) ? html` open` : ""}><summary>reasoning (${num(text.length)} characters)</summary><pre>${text}</pre></details>`;
    }
    case "content": { const text = String(ev.text ?? "").trim(); return text ? html`<div class="content"><pre>${text}</pre></div>` : ""; }
    case "tool_call": return html`<div class="tool-call"><span class="label">call</span><b>${ev.call.name}</b> <span class="muted">${ev.call.id}</span><pre>${args(ev.call.arguments)}</pre></div>`;
    case "tool_result": {
      const imgs = (Array.isArray(ev.images) ? ev.images : []).map((b) => html`<img class="tool-image" alt="image from ${ev.name}" src="${String(b).startsWith("data:") ? b : "data:image/png;base64," + b}">`);
      return html`<div class="tool-result${ev.is_error ? " error" : ""}"><span class="label">result</span><b>${ev.name}</b> <span class="muted">${ev.call_id} · ${secs(ev.duration_s)}${ev.error_type ? " · " + ev.error_type : ""}</span><pre>${ev.text}</pre>${imgs}</div>`;
    }
    case "warning": return html`<div class="warning${LOOP.test(ev.kind) ? " loop" : ""}"><span class="label">${ev.kind}${ev.level > 1 ? " · level " + ev.level : ""}</span>${ev.message}</div>`;
    case "budget": return html`<div class="warning loop"><span class="label">budget</span>${ev.budget}: ${ev.used} of ${ev.limit}</div>`;
    case "approval_requested": return html`<div class="approval"><span class="label">approval asked</span><b>${ev.call.name}</b> ${ev.call.id}${ev.reason ? " — " + ev.reason : ""}<pre>${JSON.stringify(ev.call.arguments)}</pre></div>`;
    case "approval": return html`<div class="approval"><span class="label">approval</span>${ev.action} by ${ev.by}: ${ev.name} ${ev.call_id}${ev.reason ? " — " + ev.reason : ""}${ev.arguments ? html`<pre>${JSON.stringify(ev.arguments)}</pre>` : ""}</div>`;
    case "replay_end": return html`<div class="muted"><span class="label">replay ended</span>${ev.completions} recorded completions used; the live model answers from here</div>`;
    case "branches": return html`<div class="muted"><span class="label">branches</span>${ev.n} branches · select ${ev.select} · seeds ${list(ev.seeds)}</div>`;
    case "branch_end": return html`<div class="${ev.passed ? "final" : "muted"}"><span class="label">branch ${ev.index}</span>${statusBadge(ev.status)} ${ev.verdict ?? ev.error ?? ""} ${ev.trace ? "· " + ev.trace : ""}</div>`;
    case "branch_selected": return html`<div class="final"><span class="label">selected</span>${ev.winner === null ? "no branch" : "branch " + ev.winner}: ${ev.reason}</div>`;
    case "final": return html`<div class="final"><span class="label">final</span>${statusBadge(ev.status)} ${ev.answer ?? ""}${ev.error ? html`<pre>${ev.error}</pre>` : ""}</div>`;
    default: return html`<div class="muted"><span class="label">${ev.type}</span></div>`;
  }
}

// An event of an unexpected shape (another version, another tool) shows as such; the rest still renders.
function safeItem(ev, st, run) {
  try { return item(ev, st, run); }
  catch (e) { return html`<div class="warning"><span class="label">${ev.type}</span>an event this page cannot show</div>`; }
}

function metrics(st) {
  return joined(st.calls.map((c) => { const u = c.usage && typeof c.usage === "object" ? c.usage : {};
    return html`<span class="metrics">prompt ${num(u.prompt_tokens)} · cached ${num(u.cached_tokens)} (${pct(u.prompt_tokens ? u.cached_tokens / u.prompt_tokens : null)}) · generated ${num(u.completion_tokens)} · TTFT ${secs(u.ttft_s)} · latency ${secs(u.latency_s)}${u.finish_reason ? " · " + u.finish_reason : ""}</span>`; }), " ");
}

function render(run) {
  setHTML($("#timeline"), stepsOf(run.events).map((st) =>
    html`<section class="step" data-step="${st.n}"><h3>${st.n ? "Step " + st.n : "Run"} ${metrics(st)}</h3>${st.items.map((ev) => safeItem(ev, st, run))}</section>`));
  document.querySelectorAll("details.reasoning").forEach((d) => d.addEventListener("toggle", () => {
    const k = d.dataset.key; if (d.open) run.open.add(k); else run.open.delete(k); }));
}

function route() {
  const m = location.hash.match(/^#run=(.+)$/);
  if (m) showRun(m[1]); else showList();
}
window.addEventListener("hashchange", route);
route();
</script></body></html>
"""
