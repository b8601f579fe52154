// capmill report page. Data arrives as JSON in #data; every string from it is set with
// textContent, never parsed as HTML, because captions and AltTexts are untrusted.
"use strict";
window.addEventListener("error", (e) => {
  document.getElementById("errors").textContent += "error: " + e.message + "\n";
});

const DATA = JSON.parse(document.getElementById("data").textContent);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number.isInteger(v) ? String(v) : v.toFixed(4);
}

function fillTable(table, rows, header) {
  if (header) table.append(el("tr", {}, ...header.map((h) => el("th", {}, h))));
  for (const row of rows) {
    table.append(el("tr", {}, ...row.map((c, i) => el("td", i ? { class: "num" } : {}, typeof c === "number" ? fmt(c) : c))));
  }
  if (!rows.length) table.append(el("tr", {}, el("td", {}, "none")));
}

function overview() {
  document.getElementById("title").textContent = "capmill report: " + DATA.title;
  document.getElementById("summary").textContent =
    `${DATA.total} samples (${DATA.shown} shown) · config ${DATA.config_hash || "?"} · created ${DATA.created || "?"}`;
  const models = document.getElementById("models");
  const stages = Object.entries(DATA.models || {});
  if (stages.length) models.append("models: ");
  stages.forEach(([stage, ids], i) => {
    if (i) models.append(" · ");
    models.append(stage + " ");
    ids.forEach((m, j) => {
      if (j) models.append(", ");
      models.append(el("span", { class: "model", title: m.source }, m.id));
    });
  });
  fillTable(document.getElementById("statuses"), Object.entries(DATA.statuses));
  fillTable(document.getElementById("drops"), Object.entries(DATA.drops));
  // Rejected texts by "caption key: reason" (see the guards section of the README).
  fillTable(document.getElementById("guards"), Object.entries(DATA.guards || {}));
}

function evaluations() {
  const box = document.getElementById("evaluations");
  const entries = DATA.evaluations || [];
  if (!entries.length) {
    box.append(el("p", {}, "no evaluation yet: run `capmill eval OUT --fields ...`; every evaluation is kept and shown here"));
    return;
  }
  // Newest first; each evaluation keeps its own table, so figures of other fields, references or
  // scorers stay side by side.
  for (const e of entries.slice().reverse()) {
    const refs = e.references ? (e.references.path ? e.references.path.split("/").pop() : "given in Python") +
      ` (${e.references.sha256})` : "none";
    const what = [`fields: ${(e.fields || []).join(", ")}`, `scorer: ${e.scorer || "none"}`, `references: ${refs}`];
    if (e.samples !== undefined) what.push(`${e.samples} samples`);
    if (e.limit) what.push(`--limit ${e.limit}`);
    if (e.created) what.push(e.created);
    if (e.stale) what.push("from an earlier run of this folder (another config)");
    const table = el("table", {});
    const fields = Object.keys(e.metrics || {});
    const metrics = [...new Set(fields.flatMap((f) => Object.keys(e.metrics[f])))];
    fillTable(table, metrics.map((m) => [m, ...fields.map((f) => e.metrics[f][m] ?? null)]), ["metric", ...fields]);
    const node = el("div", { class: "evaluation" + (e.stale ? " stale" : "") }, el("div", { class: "what" }, what.join(" · ")), table);
    if ((e.notes || []).length) node.append(el("details", {}, el("summary", {}, `${e.notes.length} notes`), el("pre", {}, e.notes.join("\n"))));
    box.append(node);
  }
}

function scoreKeys() {
  const keys = new Set();
  for (const s of DATA.samples) for (const k of Object.keys(s.scores)) keys.add(k);
  return [...keys].sort();
}

// A histogram with labelled axes: x is the score (min, middle, max ticks), y the number of samples.
function histogram(key, bins = 20) {
  const values = DATA.samples.map((s) => s.scores[key]).filter((v) => v !== null && v !== undefined);
  const box = el("div", { class: "hist", "data-score": key }, el("div", { class: "label" }, `${key} (n=${values.length})`));
  if (!values.length) return box;
  const lo = Math.min(...values), hi = Math.max(...values);
  const width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))]++;
  const peak = Math.max(...counts);
  const [x0, y0, w, h] = [40, 6, 200, 80];
  const chart = svg("svg", { width: 250, height: 124, role: "img", "aria-label": `histogram of ${key}` });
  counts.forEach((c, i) => {
    const bh = peak ? (c / peak) * h : 0;
    const r = svg("rect", { x: x0 + i * (w / bins) + 0.5, y: y0 + h - bh, width: w / bins - 1, height: bh });
    r.append(svg("title", {}, `${fmt(lo + i * width)} – ${fmt(lo + (i + 1) * width)}: ${c}`));
    chart.append(r);
  });
  chart.append(svg("line", { x1: x0, y1: y0 + h, x2: x0 + w, y2: y0 + h, class: "x-axis" }));
  chart.append(svg("line", { x1: x0, y1: y0, x2: x0, y2: y0 + h, class: "y-axis" }));
  for (const [frac, anchor] of [[0, "start"], [0.5, "middle"], [1, "end"]]) {
    const x = x0 + frac * w;
    chart.append(svg("line", { x1: x, y1: y0 + h, x2: x, y2: y0 + h + 4 }));
    chart.append(svg("text", { x, y: y0 + h + 14, "text-anchor": anchor, class: "x-tick" }, fmt(lo + frac * (hi - lo))));
  }
  for (const [v, y] of [[0, y0 + h], [peak, y0]]) {
    chart.append(svg("line", { x1: x0 - 4, y1: y, x2: x0, y2: y }));
    chart.append(svg("text", { x: x0 - 6, y: y + 3, "text-anchor": "end", class: "y-tick" }, String(v)));
  }
  chart.append(svg("text", { x: x0 + w / 2, y: y0 + h + 28, "text-anchor": "middle", class: "x-label" }, key));
  chart.append(svg("text", { x: 10, y: y0 + h / 2, "text-anchor": "middle", class: "y-label",
    transform: `rotate(-90 10 ${y0 + h / 2})` }, "samples"));
  box.append(chart);
  return box;
}

function query() {
  return document.getElementById("search").value.trim().toLowerCase();
}

// The text with every occurrence of the search marked (text nodes only, never HTML).
function highlighted(text, q) {
  const span = el("span", { class: "text" });
  if (!q) { span.textContent = text; return span; }
  const lower = text.toLowerCase();
  let at = 0;
  for (let i = lower.indexOf(q); i !== -1; i = lower.indexOf(q, at)) {
    span.append(text.slice(at, i), el("mark", {}, text.slice(i, i + q.length)));
    at = i + q.length;
  }
  span.append(text.slice(at));
  return span;
}

function fieldText(s, name) {
  return name === "alt_text" ? s.alt_text : s.captions[name];
}

function matches(s, q) {
  if (!q) return true;
  const texts = [s.key, s.alt_text || "", ...Object.values(s.captions)];
  return texts.some((t) => t && t.toLowerCase().includes(q));
}

function fieldScores(s, name) {
  return Object.entries(s.scores).filter(([k]) => k.endsWith(":" + name)).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
}

// What a caption's evaluation figures rest on (the eval history's per-sample details): one line
// per metric family, each opening onto its items; matched / verified items and hallucinated ones
// are marked by class (and by a sign, for readers without colour).
function chips(items, cls) {
  return el("div", { class: "chips" }, ...items.map(([text, c]) => el("span", { class: "chip " + (c || cls || "") }, text)));
}

function family(summary, body) {
  const node = el("details", { class: "family" }, el("summary", {}, summary));
  if (body) node.append(body);
  return node;
}

function evalBlock(d) {
  const box = el("div", { class: "eval" });
  if (d.capture) {
    const hit = new Set(d.capture.matched);
    box.append(family(`CAPTURE ${fmt(d.capture.score)}: ${d.capture.found.length} found · ${hit.size} matched`,
      chips(d.capture.found.map((f) => [(hit.has(f) ? "✓ " : "· ") + f, hit.has(f) ? "hit" : "miss"]))));
  }
  if (d.facts) {
    const facts = d.facts.facts || [];
    const count = (v) => facts.filter((f) => f.verdict === v).length;
    let line = `facts: ${facts.length} found · ${count("verified")} verified · ${count("hallucinated")} hallucinated`;
    if (d.facts.reference_facts !== undefined) line += ` · ${d.facts.covered.length} of ${d.facts.reference_facts} reference facts matched`;
    const list = el("ul", { class: "facts" }, ...facts.map((f) => el("li", { class: f.verdict },
      { verified: "✓ ", hallucinated: "✗ ", unverified: "? " }[f.verdict] + f.fact +
      (f.p_yes !== undefined ? ` (P(yes) ${fmt(f.p_yes)})` : ""))));
    box.append(family(line, list));
  }
  for (const [name, label] of [["chair", "CHAIR"], ["openchair", "OpenCHAIR"]]) {
    if (!d[name]) continue;
    const all = d[name].mentioned || d[name].objects || [];
    const bad = new Set(d[name].hallucinated);
    box.append(family(`${label}: ${all.length} objects · ${bad.size} hallucinated`,
      chips(all.map((o) => [(bad.has(o) ? "✗ " : "✓ ") + o, bad.has(o) ? "hallucinated" : "hit"]))));
  }
  if (d.arena) {
    box.append(el("div", { class: "arena" },
      `arena: ${d.arena.verdict} against ${d.arena.opponent} (shown ${d.arena.position === 1 ? "first" : "second"})`));
  }
  if (d.clip_image_score !== undefined) box.append(el("div", { class: "arena" }, `CLIP-Image-Score ${fmt(d.clip_image_score)}`));
  return box;
}

// What the stage that wrote a caption recorded about it (its meta: the clauses, claims, regions
// or facts it kept and dropped and why, its fallback, the guards' verdicts), as a tree that
// opens on demand.
function metaTree(v) {
  if (v === null || typeof v !== "object") return document.createTextNode(typeof v === "number" ? fmt(v) : String(v));
  const entries = Array.isArray(v) ? v.map((x) => [null, x]) : Object.entries(v);
  return el("ul", { class: "meta" }, ...entries.map(([k, x]) => {
    const item = el("li", {});
    if (k !== null) item.append(el("span", { class: "name" }, k + ": "));
    item.append(metaTree(x));
    return item;
  }));
}

function metaBlock(m) {
  const summary = m.fallback ? `fell back to the previous text: ${m.fallback}` : "how it was made";
  const node = family(summary, metaTree(m));
  if (m.fallback) node.classList.add("fallback");
  return el("div", { class: "eval made" }, node);
}

function card(s, q) {
  const failed = s.status !== "ok" && s.status !== "dropped";
  const node = el("div", { class: `sample status-${s.status}` + (failed ? " failed" : ""), "data-key": s.key });
  if (s.thumb) node.append(el("img", { src: s.thumb, alt: "", class: s.strip ? "strip" : "" }));
  node.append(el("div", { class: "key" }, highlighted(s.key, q)));
  node.append(el("div", { class: "status" }, s.status + (s.error ? ": " + s.error : "")));
  for (const name of ["alt_text", ...Object.keys(s.captions)]) {
    const text = fieldText(s, name);
    if (text === null || text === undefined) continue;
    const caption = el("div", { class: "caption" }, el("span", { class: "name" }, name), highlighted(text, q),
      el("div", { class: "scores" }, fieldScores(s, name)));
    if (s.meta && s.meta[name]) caption.append(metaBlock(s.meta[name]));
    if (s.eval && s.eval[name]) caption.append(evalBlock(s.eval[name]));
    node.append(caption);
  }
  const other = Object.entries(s.scores).filter(([k]) => !k.includes(":"));
  if (other.length) node.append(el("div", { class: "scores" }, other.map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")));
  return node;
}

function visibleRows() {
  const status = document.getElementById("status-filter").value;
  const key = document.getElementById("sort-key").value;
  const sign = document.getElementById("sort-order").value === "asc" ? 1 : -1;
  const q = query();
  const rows = DATA.samples.filter((s) => (!status || s.status === status) && matches(s, q));
  const missing = (v) => v === null || v === undefined;
  return rows.slice().sort((a, b) => {
    if (!key) return sign * (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    const va = a.scores[key], vb = b.scores[key];
    if (missing(va) || missing(vb)) return missing(va) - missing(vb);  // samples without the score go last
    return sign * (va - vb) || (a.key < b.key ? -1 : 1);
  });
}

function renderCompare(rows, q) {
  const a = document.getElementById("compare-a").value, b = document.getElementById("compare-b").value;
  const limit = Number(document.getElementById("compare-rows").value);
  const table = document.getElementById("compare");
  table.replaceChildren(el("tr", {}, el("th", { class: "thumb" }, ""), el("th", {}, a), el("th", {}, b)));
  for (const s of rows.slice(0, limit)) {
    const cell = (name) => {
      const text = fieldText(s, name);
      return el("td", { "data-field": name }, text === null || text === undefined ? "–" : highlighted(text, q),
        el("span", { class: "scores" }, fieldScores(s, name)));
    };
    const thumb = el("td", { class: "thumb" }, s.thumb ? el("img", { src: s.thumb, alt: "" }) : "",
      el("div", { class: "scores" }, s.key + (s.status === "ok" ? "" : ` (${s.status})`)));
    table.append(el("tr", { "data-key": s.key }, thumb, cell(a), cell(b)));
  }
}

function render() {
  const q = query();
  const rows = visibleRows();
  const grid = document.getElementById("grid");
  grid.replaceChildren(...rows.map((s) => card(s, q)));
  grid.dataset.count = String(rows.length);
  document.getElementById("visible-count").textContent = `${rows.length} shown`;
  renderCompare(rows, q);
}

function controls() {
  const statusSel = document.getElementById("status-filter");
  for (const s of Object.keys(DATA.statuses).sort()) statusSel.append(el("option", { value: s }, s));
  const sortSel = document.getElementById("sort-key");
  for (const k of scoreKeys()) sortSel.append(el("option", { value: k }, k));
  const fields = DATA.fields || ["alt_text"];
  for (const id of ["compare-a", "compare-b"]) {
    const sel = document.getElementById(id);
    for (const f of fields) sel.append(el("option", { value: f }, f));
  }
  // Default: the AltText against the last caption the run wrote (e.g. the fused one).
  document.getElementById("compare-a").value = fields[0];
  document.getElementById("compare-b").value = fields[fields.length - 1];
  // Until the reader picks an order, a score sorts best first and the key A to Z.
  const order = document.getElementById("sort-order");
  order.addEventListener("change", () => { order.dataset.chosen = "1"; });
  sortSel.addEventListener("change", () => {
    if (!order.dataset.chosen) order.value = sortSel.value ? "desc" : "asc";
  });
  for (const id of ["status-filter", "sort-key", "sort-order", "compare-a", "compare-b", "compare-rows"]) {
    document.getElementById(id).addEventListener("change", render);
  }
  document.getElementById("search").addEventListener("input", render);
}

overview();
evaluations();
document.getElementById("histograms").append(...scoreKeys().map((k) => histogram(k)));
controls();
render();
document.body.dataset.ready = "1";
