// Live dashboard: polls /api/cluster every POLL_MS and redraws the page in place.
// Everything coming from the network is inserted with textContent, never as HTML.
"use strict";

const POLL_MS = 500;
const CHART_WINDOW_S = 120;   // both charts show the last two minutes
const RATE_POINTS = CHART_WINDOW_S * 1000 / POLL_MS;
const SVG_NS = "http://www.w3.org/2000/svg";

const rateHistory = [];       // [{t, done, failed}] built from successive polls
let lastOk = 0;

function $(id) { return document.getElementById(id); }

function setText(id, value) {
  const el = $(id);
  if (el) el.textContent = value;
}

function fmtNum(v, digits = 0) {
  return (v === null || v === undefined) ? "–" : Number(v).toFixed(digits);
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return (s / 60).toFixed(1) + " min";
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  return s < 10 ? s.toFixed(1) + " s ago" : s.toFixed(0) + " s ago";
}

function bar(percent, label) {
  const wrap = document.createElement("span");
  const outer = document.createElement("span");
  outer.className = "bar" + (percent >= 90 ? " hot" : "");
  const inner = document.createElement("span");
  inner.style.width = Math.max(0, Math.min(100, percent)) + "%";
  outer.appendChild(inner);
  const text = document.createElement("span");
  text.className = "bar-label";
  text.textContent = label;
  wrap.append(outer, text);
  return wrap;
}

function cell(content, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  return td;
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  const rows = nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    tr.dataset.state = n.state;
    tr.className = "state-" + n.state;
    const pill = document.createElement("span");
    pill.className = "pill " + n.state;
    pill.textContent = n.state;
    const load = n.capacity > 0 ? 100 * n.in_flight / n.capacity : 0;
    tr.append(
      cell(n.id, "node-id"),
      cell(pill, "state"),
      cell(fmtAge(n.last_seen_age_s), "num"),
      cell(bar(load, n.in_flight + " / " + n.capacity)),
      cell(bar(n.cpu_percent, fmtNum(n.cpu_percent, 0) + " %")),
      cell(bar(n.memory_percent, fmtNum(n.memory_percent, 0) + " %")),
      cell(fmtNum(n.load1, 2), "num"),
      cell(String(n.done), "num"),
    );
    return tr;
  });
  body.replaceChildren(...rows);
  $("no-nodes").style.display = nodes.length ? "none" : "";
}

function renderCoordinator(c) {
  const el = $("coordinator");
  const state = c.seen ? "seen" : (c.id ? "lost" : "unknown");
  el.dataset.seen = state;
  el.className = "badge badge-" + state;
  if (c.seen) el.textContent = "coordinator " + c.id + " · seq " + c.seq;
  else if (c.id) el.textContent = "coordinator LOST (" + fmtAge(c.last_seen_age_s) + ")";
  else el.textContent = "coordinator: waiting…";
}

function renderSummary(doc) {
  for (const [state, count] of Object.entries(doc.node_counts || {})) {
    setText("count-" + state, String(count));
  }
  for (const [name, value] of Object.entries(doc.totals)) setText("total-" + name, String(value));
  setText("rate-done", fmtNum(doc.rates.done, 1));
  setText("rate-submitted", fmtNum(doc.rates.submitted, 1));
  setText("rate-failed", fmtNum(doc.rates.failed, 1));
  setText("detect-last", fmtSeconds(doc.failure_detection.last_s));
  setText("detect-count", String(doc.failure_detection.count));
  setText("recover-last", fmtSeconds(doc.partition_recovery.last_s));
  setText("recover-count", String(doc.partition_recovery.count));
  setText("uptime", fmtSeconds(doc.monitor.uptime_s));
  setText("monitor-bad", String(doc.monitor.bad_messages));
}

function renderEvents(events) {
  const items = events.slice(0, 30).map((e) => {
    const li = document.createElement("li");
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = fmtAge(e.age_s);
    const pill = document.createElement("span");
    pill.className = "pill " + ({joined: "alive", alive: "alive", suspect: "suspect",
                                 dead: "dead", left: "left"}[e.event] || "left");
    pill.textContent = e.event;
    let detail = " " + e.node;
    if (e.detection_latency_s !== null && e.detection_latency_s !== undefined) {
      detail += " · detected in " + fmtSeconds(e.detection_latency_s);
    }
    if (e.recovery_s !== null && e.recovery_s !== undefined) {
      detail += " · back after " + fmtSeconds(e.recovery_s);
    }
    li.append(when, pill, document.createTextNode(detail));
    return li;
  });
  $("events").replaceChildren(...items);
}

// A minimal line chart: x is "seconds ago" (0 at the right edge), y auto-scales.
function drawChart(svg, series, unit) {
  const width = Math.max(200, svg.clientWidth || 600);
  const height = 200, left = 60, right = 8, top = 8, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  let ymax = 0;
  for (const s of series) for (const p of s.points) ymax = Math.max(ymax, p.y);
  ymax = niceCeil(ymax || 1);
  const x = (age) => left + (width - left - right) * (1 - age / CHART_WINDOW_S);
  const y = (v) => top + (height - top - bottom) * (1 - v / ymax);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = ymax * i / 4;
    parts.push(el("line", {class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v)}));
    parts.push(el("text", {class: "axis", x: left - 6, y: y(v) + 4, "text-anchor": "end"},
                  trimNum(v) + unit));
  }
  for (const age of [120, 90, 60, 30, 0]) {
    parts.push(el("text", {class: "axis", x: x(age), y: height - 4,
                           "text-anchor": age === 120 ? "start" : (age === 0 ? "end" : "middle")},
                  age === 0 ? "now" : "-" + age + "s"));
  }
  for (const s of series) {
    const pts = s.points.filter((p) => p.age <= CHART_WINDOW_S);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => (i ? "L" : "M") + x(p.age).toFixed(1) + " " + y(p.y).toFixed(1));
    if (pts.length === 1) d.push("l 2 0");
    parts.push(el("path", {class: "line " + s.cls, d: d.join(" ")}));
    if (pts.length < 40) {  // sparse data: mark each point so a lone batch is visible
      for (const p of pts) {
        parts.push(el("circle", {class: "dot " + s.cls, cx: x(p.age), cy: y(p.y), r: 3}));
      }
    }
  }
  svg.replaceChildren(...parts);
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceCeil(v) {
  const mag = Math.pow(10, Math.floor(Math.log10(v)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * mag >= v) return step * mag;
  return 10 * mag;
}

function trimNum(v) {
  if (Number.isInteger(v) || v >= 100) return v.toFixed(0);
  return String(+v.toFixed(v >= 10 ? 1 : 2));
}

function renderCharts(doc) {
  const lat = [...doc.latency].sort((a, b) => b.age_s - a.age_s);
  drawChart($("latency-chart"), [
    {cls: "p50", points: lat.map((p) => ({age: p.age_s, y: p.p50_ms}))},
    {cls: "p99", points: lat.map((p) => ({age: p.age_s, y: p.p99_ms}))},
  ], " ms");
  const now = performance.now() / 1000;
  rateHistory.push({t: now, done: doc.rates.done, failed: doc.rates.failed});
  while (rateHistory.length > RATE_POINTS) rateHistory.shift();
  drawChart($("rate-chart"), [
    {cls: "done", points: rateHistory.map((p) => ({age: now - p.t, y: p.done}))},
    {cls: "failed", points: rateHistory.map((p) => ({age: now - p.t, y: p.failed}))},
  ], "/s");
}

async function poll() {
  try {
    const response = await fetch("/api/cluster", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = await response.json();
    renderCoordinator(doc.coordinator);
    renderSummary(doc);
    renderNodes(doc.nodes);
    renderEvents(doc.events || []);
    renderCharts(doc);
    lastOk = Date.now();
    setText("connection", "updated " + new Date().toLocaleTimeString());
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    setText("connection", "monitor unreachable: " + err.message +
            (lastOk ? " (last update " + new Date(lastOk).toLocaleTimeString() + ")" : ""));
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
