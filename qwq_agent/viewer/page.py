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
.status.error,.status.budget_exceeded,.status.loop_detected,.status.interrupted,.status.cancelled{background:#ffd6d6}
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
const num = (n) => (n ?? 0).toLocaleString("en");
const pct = (x) => x == null ? "–" : (100 * x).toFixed(1) + "%";
const secs = (x) => x == null ? "–" : (x < 1 ? (1000 * x).toFixed(0) + " ms" : x.toFixed(2) + " s");
const LOOP = /loop|repeat|identical|same_call/;
let current = null, timer = null;

// Arguments one per line, strings as written (code reads as code, not as an escaped JSON string).
function args(a) { return Object.entries(a || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("\n"); }

function statusBadge(s) { return `<span class="status ${esc(s)}">${esc(s)}</span>`; }

async function getJSON(url) { const r = await fetch(url, {cache: "no-store"}); return r.json(); }

async function showList() {
  stopPolling(); current = null; $("#run").hidden = true; $("#list").hidden = false; $("#live").textContent = "";
  const data = await getJSON("/api/runs");
  $("#where").textContent = data.root;
  $("#runs tbody").innerHTML = data.runs.map((r) => `<tr class="run" data-file="${esc(r.file)}">
    <td>${esc(r.file)}</td><td>${esc((r.task || "").slice(0, 90))}</td><td>${statusBadge(r.status)}</td>
    <td class="num">${r.steps}</td><td class="num">${num(r.prompt_tokens)} / ${num(r.generated_tokens)}</td>
    <td class="num">${pct(r.cached_share)}</td><td class="num">${secs(r.wall_s)}</td><td class="num">${r.warnings}</td></tr>`).join("");
  document.querySelectorAll("tr.run").forEach((tr) => tr.addEventListener("click", () => {
    location.hash = "run=" + encodeURIComponent(tr.dataset.file); }));
  if (location.hash === "" || location.hash === "#") timer = setTimeout(showList, 3000);
}

function stopPolling() { if (timer) clearTimeout(timer); timer = null; }

async function showRun(file) {
  stopPolling();
  current = {file, events: [], next: 0, open: new Set()};
  $("#list").hidden = true; $("#run").hidden = false; $("#timeline").innerHTML = "";
  await poll();
}

async function poll() {
  const run = current; if (!run) return;
  const data = await getJSON(`/api/events?file=${encodeURIComponent(run.file)}&from=${run.next}`);
  if (run !== current) return;
  if (data.error) { $("#summary").innerHTML = `<p>${esc(data.error)}</p>`; return; }
  run.events.push(...data.events); run.next = data.next;
  const s = data.summary;
  $("#summary").innerHTML = `<h2>${esc(s.task)}</h2><p>${statusBadge(s.status)} <span class="muted">${esc(s.file)} · run ${esc(s.run_id)} · ${esc(s.model)}
    · ${s.steps} steps · ${num(s.prompt_tokens)} prompt tokens (${pct(s.cached_share)} cached) · ${num(s.generated_tokens)} generated · ${secs(s.wall_s)}</span></p>`;
  if (data.events.length) render(run);
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
    if (ev.type === "model_call") {
      // The trace holds each model call's whole output: reasoning up to </think>, then the answer
      // (tool calls are shown from their own events).
      st.calls.push(ev);
      const text = (ev.prefix || "") + (ev.completion || ""), cut = text.indexOf("</think>");
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
    case "run_started": return `<div class="muted"><span class="label">started</span>tools: ${esc(ev.tools.join(", "))}${ev.replay_of ? " · " + esc(ev.replay_of.mode) + " of " + esc(ev.replay_of.path) : ""}</div>`;
    case "reasoning": {
      const open = run.open.has(ev.key) ? " open" : "";
      return `<details class="reasoning" data-key="${esc(ev.key)}"${open}><summary>reasoning (${num(ev.text.length)} characters)</summary><pre>${esc(ev.text)}</pre></details>`;
    }
    case "content": return ev.text.trim() ? `<div class="content"><pre>${esc(ev.text.trim())}</pre></div>` : "";
    case "tool_call": return `<div class="tool-call"><span class="label">call</span><b>${esc(ev.call.name)}</b> <span class="muted">${esc(ev.call.id)}</span><pre>${esc(args(ev.call.arguments))}</pre></div>`;
    case "tool_result": {
      const imgs = (ev.images || []).map((b) => `<img class="tool-image" alt="image from ${esc(ev.name)}" src="${b.startsWith("data:") ? esc(b) : "data:image/png;base64," + esc(b)}">`).join("");
      return `<div class="tool-result${ev.is_error ? " error" : ""}"><span class="label">result</span><b>${esc(ev.name)}</b> <span class="muted">${esc(ev.call_id)} · ${secs(ev.duration_s)}${ev.error_type ? " · " + esc(ev.error_type) : ""}</span><pre>${esc(ev.text)}</pre>${imgs}</div>`;
    }
    case "warning": return `<div class="warning${LOOP.test(ev.kind) ? " loop" : ""}"><span class="label">${esc(ev.kind)}${ev.level > 1 ? " · level " + ev.level : ""}</span>${esc(ev.message)}</div>`;
    case "budget": return `<div class="warning loop"><span class="label">budget</span>${esc(ev.budget)}: ${ev.used} of ${ev.limit}</div>`;
    case "approval_requested": return `<div class="approval"><span class="label">approval asked</span><b>${esc(ev.call.name)}</b> ${esc(ev.call.id)}${ev.reason ? " — " + esc(ev.reason) : ""}<pre>${esc(JSON.stringify(ev.call.arguments))}</pre></div>`;
    case "approval": return `<div class="approval"><span class="label">approval</span>${esc(ev.action)} by ${esc(ev.by)}: ${esc(ev.name)} ${esc(ev.call_id)}${ev.reason ? " — " + esc(ev.reason) : ""}${ev.arguments ? "<pre>" + esc(JSON.stringify(ev.arguments)) + "</pre>" : ""}</div>`;
    case "replay_end": return `<div class="muted"><span class="label">replay ended</span>${ev.completions} recorded completions used; the live model answers from here</div>`;
    case "branches": return `<div class="muted"><span class="label">branches</span>${ev.n} branches · select ${esc(ev.select)} · seeds ${esc(ev.seeds.join(", "))}</div>`;
    case "branch_end": return `<div class="${ev.passed ? "final" : "muted"}"><span class="label">branch ${ev.index}</span>${statusBadge(ev.status)} ${esc(ev.verdict ?? ev.error ?? "")} ${ev.trace ? "· " + esc(ev.trace) : ""}</div>`;
    case "branch_selected": return `<div class="final"><span class="label">selected</span>${ev.winner === null ? "no branch" : "branch " + ev.winner}: ${esc(ev.reason)}</div>`;
    case "final": return `<div class="final"><span class="label">final</span>${statusBadge(ev.status)} ${esc(ev.answer ?? "")}${ev.error ? "<pre>" + esc(ev.error) + "</pre>" : ""}</div>`;
    default: return `<div class="muted"><span class="label">${esc(ev.type)}</span></div>`;
  }
}

function metrics(st) {
  return st.calls.map((c) => { const u = c.usage || {};
    return `<span class="metrics">prompt ${num(u.prompt_tokens)} · cached ${num(u.cached_tokens)} (${pct(u.prompt_tokens ? u.cached_tokens / u.prompt_tokens : null)}) · generated ${num(u.completion_tokens)} · TTFT ${secs(u.ttft_s)} · latency ${secs(u.latency_s)}${u.finish_reason ? " · " + esc(u.finish_reason) : ""}</span>`; }).join(" ");
}

function render(run) {
  $("#timeline").innerHTML = stepsOf(run.events).map((st) =>
    `<section class="step" data-step="${st.n}"><h3>${st.n ? "Step " + st.n : "Run"} ${metrics(st)}</h3>${st.items.map((ev) => item(ev, st, run)).join("")}</section>`).join("");
  document.querySelectorAll("details.reasoning").forEach((d) => d.addEventListener("toggle", () => {
    const k = d.dataset.key; if (d.open) run.open.add(k); else run.open.delete(k); }));
}

function route() {
  const m = location.hash.match(/^#run=(.+)$/);
  if (m) showRun(decodeURIComponent(m[1])); else showList();
}
window.addEventListener("hashchange", route);
route();
</script></body></html>
"""
