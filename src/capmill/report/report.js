// capmill report page. Data arrives as JSON in #data; every string from it is set with
// textContent, never parsed as HTML, because captions and AltTexts are untrusted.
"use strict";
window.addEventListener("error", (e) => {
  document.getElementById("errors").textContent += "error: " + e.message + "\n";
});

const DATA = JSON.parse(document.getElementById("data").textContent);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
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
  const models = Object.entries(DATA.models || {}).map(([s, ids]) => s + " " + ids.join(", ")).join("; ");
  document.getElementById("summary").textContent =
    `${DATA.total} samples (${DATA.shown} shown) · config ${DATA.config_hash || "?"} · created ${DATA.created || "?"}` +
    (models ? " · models: " + models : "");
  fillTable(document.getElementById("statuses"), Object.entries(DATA.statuses));
  fillTable(document.getElementById("drops"), Object.entries(DATA.drops));
  // Rejected texts by "caption key: reason" (see the guards section of the README).
  fillTable(document.getElementById("guards"), Object.entries(DATA.guards || {}));
  const evalTable = document.getElementById("eval");
  if (!DATA.eval) {
    document.getElementById("eval-box").append(el("p", {}, "no _eval.json: run `capmill eval OUT --fields ...` first"));
    return;
  }
  const fields = Object.keys(DATA.eval);
  const metrics = [...new Set(fields.flatMap((f) => Object.keys(DATA.eval[f])))];
  fillTable(evalTable, metrics.map((m) => [m, ...fields.map((f) => DATA.eval[f][m] ?? null)]), ["metric", ...fields]);
}

function scoreKeys() {
  const keys = new Set();
  for (const s of DATA.samples) for (const k of Object.keys(s.scores)) keys.add(k);
  return [...keys].sort();
}

function histogram(key, bins = 20) {
  const values = DATA.samples.map((s) => s.scores[key]).filter((v) => v !== null && v !== undefined);
  const box = el("div", { class: "hist", "data-score": key }, el("div", { class: "label" }, `${key} (n=${values.length})`));
  if (!values.length) return box;
  const lo = Math.min(...values), hi = Math.max(...values);
  const width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))]++;
  const peak = Math.max(...counts);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "220"); svg.setAttribute("height", "80");
  counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect");
    const h = peak ? (c / peak) * 70 : 0;
    r.setAttribute("x", String(i * 11)); r.setAttribute("y", String(75 - h));
    r.setAttribute("width", "10"); r.setAttribute("height", String(h));
    const t = document.createElementNS(ns, "title");
    t.textContent = `${fmt(lo + i * width)} – ${fmt(lo + (i + 1) * width)}: ${c}`;
    r.append(t); svg.append(r);
  });
  box.append(svg, el("div", { class: "scores" }, `${fmt(lo)} … ${fmt(hi)}`));
  return box;
}

function card(s) {
  const failed = s.status !== "ok" && s.status !== "dropped";
  const node = el("div", { class: `sample status-${s.status}` + (failed ? " failed" : ""), "data-key": s.key });
  if (s.thumb) node.append(el("img", { src: s.thumb, alt: "" }));
  node.append(el("div", { class: "key" }, s.key));
  node.append(el("div", { class: "status" }, s.status + (s.error ? ": " + s.error : "")));
  const fields = [["alt_text", s.alt_text], ...Object.entries(s.captions)];
  for (const [name, text] of fields) {
    if (text === null || text === undefined) continue;
    const scores = Object.entries(s.scores).filter(([k]) => k.endsWith(":" + name));
    node.append(el("div", { class: "caption" }, el("span", { class: "name" }, name), el("span", { class: "text" }, text),
      el("div", { class: "scores" }, scores.map(([k, v]) => `${k} ${fmt(v)}`).join(" · "))));
  }
  const other = Object.entries(s.scores).filter(([k]) => !k.includes(":"));
  if (other.length) node.append(el("div", { class: "scores" }, other.map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")));
  return node;
}

function renderGrid() {
  const status = document.getElementById("status-filter").value;
  const key = document.getElementById("sort-key").value;
  const desc = document.getElementById("sort-desc").checked;
  let rows = DATA.samples.filter((s) => !status || s.status === status);
  const value = (s) => (key ? s.scores[key] : null);
  rows = rows.slice().sort((a, b) => {
    if (!key) return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
    const va = value(a), vb = value(b);
    if (va === null || va === undefined) return 1;   // samples without the score go last
    if (vb === null || vb === undefined) return -1;
    return desc ? vb - va : va - vb;
  });
  const grid = document.getElementById("grid");
  grid.replaceChildren(...rows.map(card));
  grid.dataset.count = String(rows.length);
  document.getElementById("visible-count").textContent = `${rows.length} shown`;
}

function controls() {
  const statusSel = document.getElementById("status-filter");
  for (const s of Object.keys(DATA.statuses).sort()) statusSel.append(el("option", { value: s }, s));
  const sortSel = document.getElementById("sort-key");
  for (const k of scoreKeys()) sortSel.append(el("option", { value: k }, k));
  for (const id of ["status-filter", "sort-key", "sort-desc"]) document.getElementById(id).addEventListener("change", renderGrid);
}

overview();
document.getElementById("histograms").append(...scoreKeys().map((k) => histogram(k)));
controls();
renderGrid();
document.body.dataset.ready = "1";
