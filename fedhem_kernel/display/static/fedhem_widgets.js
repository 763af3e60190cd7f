// FedHem result widgets (anywidget ES module, no build step, no imports).
// One module for every FedHem widget; `_kind` picks the view. The privacy panel is composed into
// every result view. All text goes in through textContent (site names and reasons are not HTML).

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const STATUS_TEXT = {
  released: "released",
  suppressed: "released, with suppression",
  refused: "refused",
  error: "error",
  waiting: "waiting",
};

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e6 || abs < 1e-3)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

function badge(status, text) {
  return h("span", { class: `fedhem-badge fedhem-badge-${status}` }, text || STATUS_TEXT[status] || status);
}

// -- privacy report panel ---------------------------------------------------------------------
function renderPrivacy(state, root) {
  root.classList.add("fedhem-privacy");
  root.replaceChildren();
  if (!state || !state.outcomes) return root;
  root.append(h("div", { class: "fedhem-privacy-title" }, h("b", {}, "Privacy report"),
    ` ${state.analysis} on '${state.dataset}'`));
  const counts = {};
  for (const o of state.outcomes) counts[o.status] = (counts[o.status] || 0) + 1;
  root.append(h("div", { class: "fedhem-privacy-summary" },
    Object.entries(counts).map(([status, n]) => badge(status, `${n} ${STATUS_TEXT[status] || status}`))));
  const body = state.outcomes.map((o) => {
    const reasons = o.rules.length
      ? o.rules.map((rule, i) => h("div", { class: "fedhem-reason" }, h("b", {}, rule), `: ${o.details[i] || ""}`))
      : (o.budget ? [] : ["—"]);
    if (o.budget) {
      const b = o.budget;
      reasons.push(h("div", { class: "fedhem-reason fedhem-budget" }, h("b", {}, "DP budget"),
        `: ρ ${b.rho_spent.toPrecision(3)} of ${b.rho_cap.toPrecision(3)} spent ` +
        `(ε ${b.epsilon_spent.toFixed(2)} of ${b.epsilon_cap.toFixed(2)} at δ = 1e-5); ` +
        `ρ ${b.rho_left.toPrecision(3)} left`));
    }
    return h("tr", { "data-site": o.site, "data-status": o.status },
      h("td", {}, o.site), h("td", {}, badge(o.status)), h("td", { class: "fedhem-reasons" }, reasons));
  });
  root.append(h("table", { class: "fedhem-grid" },
    h("thead", {}, h("tr", {}, h("th", {}, "site"), h("th", {}, "outcome"), h("th", {}, "rules applied"))),
    h("tbody", {}, body)));
  if (state.notes && state.notes.length) {
    root.append(h("ul", { class: "fedhem-notes" }, state.notes.map((n) => h("li", {}, n))));
  }
  return root;
}

// -- results table ------------------------------------------------------------------------------
function renderTable(state) {
  const head = [...state.index_names.map((n) => h("th", { class: "fedhem-index" }, n)),
    ...state.columns.map((c) => h("th", {}, c))];
  if (state.columns_name && state.index_names.length) {
    const last = head[state.index_names.length - 1];
    last.textContent = last.textContent ? `${last.textContent} \\ ${state.columns_name}` : state.columns_name;
  }
  const rows = state.rows.map((row) => h("tr", {},
    row.index.map((v) => h("th", { class: "fedhem-index" }, v)),
    row.values.map((v, i) => {
      const flag = row.flags[i];
      if (flag === "suppressed") {
        return h("td", { class: "fedhem-cell-suppressed", "data-flag": "suppressed" },
          h("span", { class: "fedhem-badge fedhem-suppressed-badge",
            title: "withheld by a site's privacy policy (small count, or derivable from totals)" },
          "suppressed"));
      }
      if (flag === "na") {
        return h("td", { class: "fedhem-cell-na", "data-flag": "na", title: "not released or not defined" }, "—");
      }
      return h("td", { class: typeof v === "number" ? "fedhem-num" : "" }, fmt(v));
    })));
  return h("div", { class: "fedhem-table-block" },
    h("table", { class: "fedhem-grid fedhem-data" }, h("thead", {}, h("tr", {}, head)), h("tbody", {}, rows)));
}

// -- forest plot (Cox): estimate and interval per row on a log axis, reference line at 1 --------
function renderForest(fig) {
  const rows = fig.rows || [];
  const W = 460, left = 150, right = 16, top = 8, rowH = 22, axisH = 34;
  const H = top + rowH * rows.length + axisH;
  const vals = rows.flatMap((r) => [r.estimate, r.lower, r.upper]).filter((v) => v > 0 && Number.isFinite(v));
  let lo = Math.min(fig.reference, ...vals), hi = Math.max(fig.reference, ...vals);
  if (!(hi > lo)) { lo = fig.reference / 2; hi = fig.reference * 2; }
  const l0 = Math.log10(lo) - 0.05 * (Math.log10(hi) - Math.log10(lo));
  const l1 = Math.log10(hi) + 0.05 * (Math.log10(hi) - Math.log10(lo));
  const x = (v) => left + ((Math.log10(v) - l0) / (l1 - l0)) * (W - left - right);
  const root = svg("svg", { class: "fedhem-forest", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  const ref = x(fig.reference);
  root.append(svg("line", { x1: ref, x2: ref, y1: top, y2: H - axisH, stroke: "#888", "stroke-dasharray": "4 3" }));
  rows.forEach((r, i) => {
    const y = top + rowH * i + rowH / 2;
    const g = svg("g", { class: "fedhem-forest-row" });
    g.append(svg("text", { x: left - 8, y: y + 4, "text-anchor": "end", "font-size": 12 }, r.label));
    const a = r.lower === null ? x(Math.pow(10, l0)) : x(r.lower);
    const b = r.upper === null ? x(Math.pow(10, l1)) : x(r.upper);
    g.append(svg("line", { x1: a, x2: b, y1: y, y2: y, stroke: "#1f4e79", "stroke-width": 2 }));
    g.append(svg("rect", { x: x(r.estimate) - 4, y: y - 4, width: 8, height: 8, fill: "#1f4e79" }));
    g.append(svg("title", {}, `${r.label}: ${fmt(r.estimate)} (${fmt(r.lower)} to ${fmt(r.upper)}), p = ${fmt(r.p)}`));
    root.append(g);
  });
  const ticks = [];
  for (let e = Math.floor(l0); e <= Math.ceil(l1); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, e);
      if (Math.log10(v) >= l0 && Math.log10(v) <= l1) ticks.push(v);
    }
  }
  const yAxis = H - axisH;
  root.append(svg("line", { x1: left, x2: W - right, y1: yAxis, y2: yAxis, stroke: "#444" }));
  for (const v of ticks) {
    root.append(svg("line", { x1: x(v), x2: x(v), y1: yAxis, y2: yAxis + 4, stroke: "#444" }));
    root.append(svg("text", { x: x(v), y: yAxis + 16, "text-anchor": "middle", "font-size": 11 }, fmt(v)));
  }
  root.append(svg("text", { x: (left + W - right) / 2, y: H - 2, "text-anchor": "middle", "font-size": 11 }, fig.label || ""));
  return h("div", { class: "fedhem-figure" }, root);
}

// -- scatter on two principal components: k-means centres (area ~ released size) or PCA loadings --
// Equal units on both axes (distances are honest); the origin is always in view.
function linearTicks(lo, hi, target) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  const step = (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
  const out = [];
  for (let i = Math.ceil(lo / step); i * step <= hi * (1 + 1e-9) + 1e-12; i++) out.push(Number((i * step).toPrecision(12)));
  return out;
}

function axisName(label) {
  return String(label || "").split(" (")[0];
}

function renderScree(scree) {
  const W = 460, barH = 12, rowH = 16, left = 52;
  const root = svg("svg", { class: "fedhem-scree", width: W, height: rowH * scree.length + 4,
    viewBox: `0 0 ${W} ${rowH * scree.length + 4}`, role: "img", "aria-label": "explained variance ratio" });
  scree.forEach((c, i) => {
    const y = 2 + i * rowH, w = (c.ratio || 0) * (W - left - 60);
    root.append(svg("text", { x: left - 6, y: y + barH - 2, "text-anchor": "end" }, c.label));
    const bar = svg("rect", { x: left, y, width: Math.max(0, w), height: barH, class: "fedhem-scree-bar" });
    bar.append(svg("title", {}, `${c.label}: ${fmt(c.ratio === null ? null : 100 * c.ratio)}% of the variance`));
    root.append(bar);
    root.append(svg("text", { x: left + w + 4, y: y + barH - 2 }, c.ratio === null ? "" : `${(100 * c.ratio).toFixed(1)}%`));
  });
  return h("div", { class: "fedhem-scree-block" }, h("div", { class: "fedhem-caption" }, "explained variance ratio"), root);
}

function renderScatter(fig) {
  const centres = fig.mode === "centers";
  const points = (fig.points || []).filter((p) => p.x !== null && p.y !== null);
  const W = 460, H = 400, left = 56, right = 14, top = 10, bottom = 42;
  const plotW = W - left - right, plotH = H - top - bottom;
  const RMAX = 28, RMIN = 3;
  const radius = (p) => (centres ? Math.max(RMIN, RMAX * Math.sqrt(p.area || 0)) : 3);
  const xs = [0, ...points.map((p) => p.x)], ys = [0, ...points.map((p) => p.y)];
  if (fig.unit_circle) { xs.push(-1, 1); ys.push(-1, 1); }
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = centres ? RMAX + 6 : 34; // room for the largest circle, or a feature's label
  const unit = Math.min((plotW - 2 * pad) / Math.max(x1 - x0, 1e-9), (plotH - 2 * pad) / Math.max(y1 - y0, 1e-9));
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const x = (v) => left + plotW / 2 + (v - cx) * unit;
  const y = (v) => top + plotH / 2 - (v - cy) * unit;
  const root = svg("svg", { class: "fedhem-scatter", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": fig.title || "scatter", "data-mode": fig.mode || "" });
  const xTicks = linearTicks(cx - plotW / 2 / unit, cx + plotW / 2 / unit, 5);
  const yTicks = linearTicks(cy - plotH / 2 / unit, cy + plotH / 2 / unit, 5);
  for (const t of xTicks) {
    root.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: top + plotH, class: t === 0 ? "fedhem-scatter-zero" : "fedhem-km-grid" }));
    root.append(svg("text", { x: x(t), y: top + plotH + 14, "text-anchor": "middle", class: "fedhem-km-tick" }, fmt(t)));
  }
  for (const t of yTicks) {
    root.append(svg("line", { x1: left, x2: left + plotW, y1: y(t), y2: y(t), class: t === 0 ? "fedhem-scatter-zero" : "fedhem-km-grid" }));
    root.append(svg("text", { x: left - 5, y: y(t) + 4, "text-anchor": "end", class: "fedhem-km-tick" }, fmt(t)));
  }
  root.append(svg("rect", { x: left, y: top, width: plotW, height: plotH, class: "fedhem-km-frame" }));
  root.append(svg("text", { x: left + plotW / 2, y: H - 6, "text-anchor": "middle", class: "fedhem-km-label" }, fig.x_label || ""));
  root.append(svg("text", { x: 12, y: top + plotH / 2, "text-anchor": "middle", class: "fedhem-km-label",
    transform: `rotate(-90 12 ${top + plotH / 2})` }, fig.y_label || ""));
  if (fig.unit_circle) {
    root.append(svg("circle", { cx: x(0), cy: y(0), r: unit, class: "fedhem-scatter-circle" }));
  }
  const xn = axisName(fig.x_label), yn = axisName(fig.y_label);
  // larger circles first, so that a small cluster's circle stays on top
  const order = points.map((p, i) => [p, i]).sort((a, b) => radius(b[0]) - radius(a[0]));
  for (const [p, i] of order) {
    const colour = PALETTE[i % PALETTE.length];
    const g = svg("g", { class: "fedhem-scatter-point", "data-label": p.label });
    if (centres) {
      const empty = !(p.size > 0);
      g.append(svg("circle", { cx: x(p.x), cy: y(p.y), r: radius(p), fill: empty ? "none" : colour, stroke: colour,
        class: empty ? "fedhem-scatter-empty" : "" }));
      g.append(svg("text", { x: x(p.x), y: y(p.y) + 4, "text-anchor": "middle", class: "fedhem-scatter-label" }, p.label));
      g.append(svg("title", {}, `cluster ${p.label}: ${p.size} patients released; ${xn} ${fmt(p.x)}, ${yn} ${fmt(p.y)}`));
    } else {
      g.append(svg("line", { x1: x(0), y1: y(0), x2: x(p.x), y2: y(p.y), class: "fedhem-scatter-arrow" }));
      g.append(svg("circle", { cx: x(p.x), cy: y(p.y), r: radius(p), fill: "#1f4e79" }));
      g.append(svg("text", { x: x(p.x) + (p.x >= 0 ? 6 : -6), y: y(p.y) + (p.y >= 0 ? -4 : 12),
        "text-anchor": p.x >= 0 ? "start" : "end", class: "fedhem-scatter-label" }, p.label));
      g.append(svg("title", {}, `${p.label}: loading ${fmt(p.x)} on ${xn}, ${fmt(p.y)} on ${yn}`));
    }
    root.append(g);
  }
  return h("div", { class: "fedhem-figure" }, h("div", { class: "fedhem-caption" }, fig.title || ""), root,
    fig.scree && fig.scree.length ? renderScree(fig.scree) : null,
    (fig.notes || []).map((n) => h("div", { class: "fedhem-note" }, n)));
}

// -- heatmap of k-means centres: rows clusters, columns features, colour = distance from the mean --
function heatColour(z, limit) {
  if (z === null || z === undefined) return "#eeeeee";
  const t = Math.max(-1, Math.min(1, z / (limit || 1)));
  const base = t >= 0 ? [178, 24, 43] : [33, 102, 172]; // red above the pooled mean, blue below
  const c = base.map((v) => Math.round(255 + (v - 255) * Math.abs(t)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function renderHeatmap(fig) {
  const rows = fig.rows || [], cols = fig.columns || [];
  const sd = fig.scale === "sd";
  const cellW = cols.length > 12 ? 24 : 44, cellH = 26;
  const longest = Math.max(1, ...cols.map((c) => Math.min(c.length, 32)));
  const rowLabel = (r, i) => `cluster ${r} (n = ${(fig.sizes || [])[i] ?? ""})`;
  const left = Math.round(Math.max(40, ...rows.map((r, i) => rowLabel(r, i).length * 6.4)) + 10);
  const top = Math.round(longest * 5.2 + 12), right = Math.round(longest * 4.7), legendH = 40;
  const W = Math.max(300, left + cellW * cols.length + right), H = top + cellH * rows.length + legendH;
  const root = svg("svg", { class: "fedhem-heatmap", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": fig.title || "cluster profiles" });
  cols.forEach((c, j) => {
    const cx = left + cellW * j + cellW / 2, cy = top - 6;
    root.append(svg("text", { x: cx, y: cy, transform: `rotate(-45 ${cx} ${cy})`, class: "fedhem-heatmap-column" },
      c.length > 32 ? `${c.slice(0, 31)}…` : c));
  });
  rows.forEach((r, i) => {
    const yy = top + cellH * i;
    root.append(svg("text", { x: left - 6, y: yy + cellH / 2 + 4, "text-anchor": "end", class: "fedhem-heatmap-row" },
      rowLabel(r, i)));
    cols.forEach((c, j) => {
      const z = fig.z[i][j];
      const cell = svg("rect", { x: left + cellW * j, y: yy, width: cellW - 1, height: cellH - 1,
        fill: heatColour(z, fig.limit), class: "fedhem-heatmap-cell", "data-row": r, "data-column": c });
      const away = z === null ? "" : sd
        ? `; ${fmt(z)} SD from the pooled mean`
        : `; ${fmt(z)} of the largest distance from the pooled mean in this column`;
      cell.append(svg("title", {}, `cluster ${r}, ${c}: centre ${fmt(fig.values[i][j])} (pooled mean ${fmt(fig.means[j])})${away}`));
      root.append(cell);
      if (cellW >= 40 && z !== null) {
        root.append(svg("text", { x: left + cellW * j + cellW / 2, y: yy + cellH / 2 + 4, "text-anchor": "middle",
          class: Math.abs(z / (fig.limit || 1)) > 0.6 ? "fedhem-heatmap-value fedhem-heatmap-dark" : "fedhem-heatmap-value" },
        z.toFixed(1)));
      }
    });
  });
  // colour legend: from -limit to +limit
  const ly = top + cellH * rows.length + 12, lw = Math.min(200, W - left - right), steps = 21;
  for (let s = 0; s < steps; s++) {
    const v = -fig.limit + (2 * fig.limit * s) / (steps - 1);
    root.append(svg("rect", { x: left + (lw * s) / steps, y: ly, width: lw / steps + 0.5, height: 8, fill: heatColour(v, fig.limit) }));
  }
  const unitText = sd ? " SD" : "";
  root.append(svg("text", { x: left, y: ly + 20, "text-anchor": "middle", class: "fedhem-km-tick" }, `−${fmt(fig.limit)}${unitText}`));
  root.append(svg("text", { x: left + lw / 2, y: ly + 20, "text-anchor": "middle", class: "fedhem-km-tick" }, "mean"));
  root.append(svg("text", { x: left + lw, y: ly + 20, "text-anchor": "middle", class: "fedhem-km-tick" }, `+${fmt(fig.limit)}${unitText}`));
  return h("div", { class: "fedhem-figure" }, h("div", { class: "fedhem-caption" }, fig.title || ""), root,
    h("div", { class: "fedhem-note" }, `colour: ${fig.label || ""}`));
}

const FIGURES = { forest: renderForest, scatter: renderScatter, heatmap: renderHeatmap };

function renderResultTables(model, el) {
  el.classList.add("fedhem-table", "fedhem-result-w");
  const draw = () => {
    const tables = model.get("tables") || [];
    const main = h("div", { class: "fedhem-main" }, h("div", { class: "fedhem-title" }, model.get("title")));
    const fig = model.get("figure") || {};
    if (FIGURES[fig.kind]) main.append(FIGURES[fig.kind](fig));
    tables.forEach((t, i) => {
      if (i === 0) {
        if (t.caption) main.append(h("div", { class: "fedhem-caption" }, t.caption));
        main.append(renderTable(t));
      } else {
        main.append(h("details", { class: "fedhem-more" }, h("summary", {}, t.caption || `table ${i + 1}`), renderTable(t)));
      }
    });
    if (model.get("footnote")) main.append(h("div", { class: "fedhem-note" }, model.get("footnote")));
    el.replaceChildren(main, renderPrivacy(model.get("privacy"), h("div")));
  };
  draw();
  const events = "change:tables change:title change:footnote change:privacy change:figure";
  model.on(events, draw);
  return () => model.off(events, draw);
}

// -- Kaplan–Meier -------------------------------------------------------------------------------
function niceTicks(max, target) {
  if (!(max > 0)) return [0];
  const raw = max / target;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  const step = (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
  const out = [];
  for (let i = 0; i * step <= max * (1 + 1e-9); i++) out.push(Number((i * step).toPrecision(12)));
  return out;
}

// index of the last time <= t (-1 before the first)
function stepIndex(times, t) {
  let lo = 0, hi = times.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (times[mid] <= t) lo = mid + 1; else hi = mid; }
  return lo - 1;
}

// number at risk at t: at_risk of the first released row with time >= t (0 after the last;
// "–" after the last of a curve that was cut before everyone left: not known, fewer than ~k)
function atRiskAt(table, t) {
  let lo = 0, hi = table.time.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (table.time[mid] < t) lo = mid + 1; else hi = mid; }
  return lo < table.at_risk.length ? table.at_risk[lo] : (table.cut ? "–" : 0);
}

function groupEnd(g, fallback) {
  const times = g.table.time;
  return times.length ? times[times.length - 1] : fallback;
}

function renderKM(model, el) {
  el.classList.add("fedhem-km", "fedhem-result-w");
  let cleanupHover = () => {};
  const draw = () => {
    cleanupHover();
    const km = model.get("km") || {};
    const groups = km.groups || [];
    const timeline = km.timeline || [];
    const unit = km.unit ? ` ${km.unit}` : "";
    const tMax = Math.max(timeline.length ? timeline[timeline.length - 1] : 0,
      ...groups.map((g) => (g.table.time.length ? g.table.time[g.table.time.length - 1] : 0)), 1e-9);
    const longest = Math.max(8, ...groups.map((g) => g.name.length));
    const left = Math.min(160, Math.max(56, 7 * longest + 28)), right = 18, top = 12, plotH = 260;
    const width = 680, plotW = width - left - right;
    const riskTop = top + plotH + 44, rowH = 17;
    const height = riskTop + 18 + rowH * groups.length + 4;
    const x = (t) => left + (t / tMax) * plotW;
    const y = (s) => top + (1 - s) * plotH;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "fedhem-km-svg", role: "img",
      "aria-label": km.title || "Kaplan–Meier curves" });
    // axes and grid
    const xTicks = niceTicks(tMax, 6).filter((t) => t <= tMax * (1 + 1e-9));
    for (const s of [0, 0.25, 0.5, 0.75, 1]) {
      root.append(svg("line", { x1: left, x2: left + plotW, y1: y(s), y2: y(s), class: "fedhem-km-grid" }));
      root.append(svg("text", { x: left - 6, y: y(s) + 4, "text-anchor": "end", class: "fedhem-km-tick" }, s));
    }
    for (const t of xTicks) {
      root.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: top + plotH, class: "fedhem-km-grid" }));
      root.append(svg("text", { x: x(t), y: top + plotH + 15, "text-anchor": "middle", class: "fedhem-km-tick" }, fmt(t)));
    }
    root.append(svg("rect", { x: left, y: top, width: plotW, height: plotH, class: "fedhem-km-frame" }));
    root.append(svg("text", { x: left + plotW / 2, y: top + plotH + 32, "text-anchor": "middle", class: "fedhem-km-label" },
      `${km.duration || "time"}${km.unit ? ` (${km.unit})` : ""}`));
    root.append(svg("text", { x: 12, y: top + plotH / 2, "text-anchor": "middle", class: "fedhem-km-label",
      transform: `rotate(-90 12 ${top + plotH / 2})` }, "survival probability"));
    // bands, curves, merged-step ticks
    groups.forEach((g, gi) => {
      const colour = PALETTE[gi % PALETTE.length];
      const s = g.survival.map((v) => (v === null ? 1 : v));
      const lo = g.lower.map((v, i) => (v === null ? s[i] : v));
      const hi = g.upper.map((v, i) => (v === null ? s[i] : v));
      // a curve ends at its group's last released time (nobody of the group is followed beyond)
      const end = groupEnd(g, tMax);
      const n = Math.max(1, stepIndex(timeline, end) + 1);
      if (!timeline.length) return;
      let band = `M${x(timeline[0])},${y(hi[0])}`;
      for (let j = 1; j < n; j++) band += `H${x(timeline[j])}V${y(hi[j])}`;
      band += `H${x(end)}V${y(lo[n - 1])}`;
      for (let j = n - 1; j >= 1; j--) band += `H${x(timeline[j])}V${y(lo[j - 1])}`;
      band += `H${x(timeline[0])}Z`;
      root.append(svg("path", { d: band, fill: colour, class: "fedhem-km-band", "data-group": g.name }));
      let line = `M${x(timeline[0])},${y(s[0])}`;
      for (let j = 1; j < n; j++) line += `H${x(timeline[j])}V${y(s[j])}`;
      line += `H${x(end)}`;
      root.append(svg("path", { d: line, stroke: colour, class: "fedhem-km-curve", "data-group": g.name }));
      if (Object.keys(g.merged || {}).length) {
        g.table.time.forEach((t, r) => {
          if (!(g.table.observed[r] > 0)) return;
          const sy = y(s[Math.max(0, stepIndex(timeline, t))]);
          root.append(svg("circle", { cx: x(t), cy: sy, r: 2.5, stroke: colour,
            class: "fedhem-km-merged", "data-group": g.name, "data-time": t }));
        });
      }
    });
    // numbers at risk under the plot, at the x ticks
    root.append(svg("text", { x: 4, y: riskTop, class: "fedhem-km-label" }, "number at risk"));
    groups.forEach((g, gi) => {
      const ry = riskTop + 18 + gi * rowH;
      root.append(svg("text", { x: 4, y: ry, fill: PALETTE[gi % PALETTE.length], class: "fedhem-km-risk-name" },
        g.name.length > 20 ? `${g.name.slice(0, 19)}…` : g.name));
      for (const t of xTicks) {
        root.append(svg("text", { x: x(t), y: ry, "text-anchor": "middle", class: "fedhem-km-risk",
          "data-group": g.name, "data-time": t }, atRiskAt(g.table, t)));
      }
    });
    // hover: a guide line and a tooltip with time, S(t), CI and number at risk per group
    const guide = svg("line", { y1: top, y2: top + plotH, class: "fedhem-km-guide", visibility: "hidden" });
    const overlay = svg("rect", { x: left, y: top, width: plotW, height: plotH, class: "fedhem-km-overlay" });
    root.append(guide, overlay);
    const tip = h("div", { class: "fedhem-km-tooltip", hidden: true });
    const plot = h("div", { class: "fedhem-km-plot" }, root, tip);
    const move = (ev) => {
      const box = root.getBoundingClientRect();
      if (!box.width) return;
      const px = ((ev.clientX - box.left) * width) / box.width;
      const t = Math.min(tMax, Math.max(0, ((px - left) / plotW) * tMax));
      guide.setAttribute("x1", x(t)); guide.setAttribute("x2", x(t)); guide.setAttribute("visibility", "visible");
      const j = Math.max(0, stepIndex(timeline, t));
      tip.replaceChildren(h("div", { class: "fedhem-km-tip-time" }, `t = ${fmt(t)}${unit}`),
        ...groups.map((g, gi) => h("div", {},
          h("span", { class: "fedhem-swatch", style: `background:${PALETTE[gi % PALETTE.length]}` }),
          t > groupEnd(g, tMax)
            ? `${g.name}: after the last released time (${fmt(groupEnd(g, tMax))}${unit})`
            : `${g.name}: S = ${fmt(g.survival[j])} [${fmt(g.lower[j])}, ${fmt(g.upper[j])}], at risk ${atRiskAt(g.table, t)}`)));
      tip.hidden = false;
      const pbox = plot.getBoundingClientRect();
      const tx = ev.clientX - pbox.left + 14;
      tip.style.left = `${Math.min(tx, Math.max(0, pbox.width - 260))}px`;
      tip.style.top = `${ev.clientY - pbox.top + 10}px`;
    };
    const leave = () => { tip.hidden = true; guide.setAttribute("visibility", "hidden"); };
    overlay.addEventListener("mousemove", move);
    overlay.addEventListener("mouseleave", leave);
    cleanupHover = () => { overlay.removeEventListener("mousemove", move); overlay.removeEventListener("mouseleave", leave); };
    // legend: groups, medians and what the sites merged or withheld
    const legend = h("div", { class: "fedhem-km-legend" }, groups.map((g, gi) => {
      const merged = Object.entries(g.merged || {});
      return h("div", { class: "fedhem-km-legend-item", "data-group": g.name },
        h("span", { class: "fedhem-swatch", style: `background:${PALETTE[gi % PALETTE.length]}` }),
        h("b", {}, g.name), ` median ${g.median === null ? "not reached" : fmt(g.median) + unit}`,
        merged.length ? h("span", { class: "fedhem-km-mark fedhem-km-merged-note",
          title: "a site merged steps with counts below its minimum into neighbours; each marked step may combine several event times" },
        `○ merged steps (${merged.map(([site, k]) => `${site}: ${k}`).join(", ")})`) : null,
        g.withheld_by && g.withheld_by.length ? h("span", { class: "fedhem-km-mark fedhem-km-withheld" },
          `withheld by ${g.withheld_by.join(", ")}: curve from the other sites`) : null);
    }), (km.not_shown || []).map((g) => h("div", { class: "fedhem-km-legend-item fedhem-km-withheld" },
      h("b", {}, g.name), ` not shown: withheld by ${g.withheld_by.join(", ")}`)));
    const grid = km.time_step === null || km.time_step === undefined
      ? "exact times"
      : `times coarsened at the sites to a grid of step ${fmt(km.time_step)} (${km.unit || "units"})`;
    const main = h("div", { class: "fedhem-main" }, h("div", { class: "fedhem-title" }, km.title || ""), plot, legend,
      h("div", { class: "fedhem-note" }, `${grid}; ${km.source || "curves pooled from the sites' released event tables"}; shaded: 95% confidence interval.`));
    el.replaceChildren(main, renderPrivacy(model.get("privacy"), h("div")));
  };
  draw();
  model.on("change:km change:privacy", draw);
  return () => { cleanupHover(); model.off("change:km change:privacy", draw); };
}

// -- cumulative incidence (competing risks) -----------------------------------------------------
// One panel per group. "stacked": the causes are stacked bands (event of interest at the bottom),
// the space above them is the event-free probability; "curves": one step curve per cause with its
// 95% band. Numbers at risk under each panel, hover values, Gray's test in the legend.
const CAUSE_COLOURS = ["#d62728", "#1f77b4", "#7f7f7f", "#9467bd", "#8c564b", "#2ca02c", "#e377c2"];

function cifPanel(cif, g, mode, tMax) {
  const width = 360, left = 46, right = 12, top = 10, plotH = 200, plotW = width - left - right;
  const riskTop = top + plotH + 46, height = riskTop + 22;
  const x = (t) => left + (t / tMax) * plotW;
  const y = (p) => top + (1 - p) * plotH;
  const timeline = cif.timeline || [];
  const end = groupEnd(g, tMax);
  const n = Math.max(1, stepIndex(timeline, end) + 1);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "fedhem-km-svg fedhem-cif-svg", role: "img",
    "aria-label": `cumulative incidence, ${g.name}`, "data-group": g.name });
  const xTicks = niceTicks(tMax, 4).filter((t) => t <= tMax * (1 + 1e-9));
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("line", { x1: left, x2: left + plotW, y1: y(p), y2: y(p), class: "fedhem-km-grid" }));
    root.append(svg("text", { x: left - 5, y: y(p) + 4, "text-anchor": "end", class: "fedhem-km-tick" }, p));
  }
  for (const t of xTicks) {
    root.append(svg("line", { x1: x(t), x2: x(t), y1: top, y2: top + plotH, class: "fedhem-km-grid" }));
    root.append(svg("text", { x: x(t), y: top + plotH + 14, "text-anchor": "middle", class: "fedhem-km-tick" }, fmt(t)));
  }
  root.append(svg("rect", { x: left, y: top, width: plotW, height: plotH, class: "fedhem-km-frame" }));
  root.append(svg("text", { x: left + plotW / 2, y: top + plotH + 30, "text-anchor": "middle", class: "fedhem-km-label" },
    `${cif.duration || "time"}${cif.unit ? ` (${cif.unit})` : ""}`));
  const steps = (vals) => {
    let d = `M${x(timeline[0])},${y(vals[0])}`;
    for (let j = 1; j < n; j++) d += `H${x(timeline[j])}V${y(vals[j])}`;
    return d + `H${x(end)}`;
  };
  const val = (v) => (v === null || v === undefined ? 0 : v);
  let base = timeline.map(() => 0);
  (cif.causes || []).forEach((cause, ci) => {
    const colour = CAUSE_COLOURS[ci % CAUSE_COLOURS.length];
    const f = g.cif[ci].map(val);
    if (!timeline.length) return;
    if (mode === "stacked") {
      const top_ = f.map((v, j) => base[j] + v);
      let area = steps(top_);
      area += `V${y(base[n - 1])}`;
      for (let j = n - 1; j >= 1; j--) area += `H${x(timeline[j])}V${y(base[j - 1])}`;
      area += `H${x(timeline[0])}Z`;
      root.append(svg("path", { d: area, fill: colour, class: "fedhem-cif-area", "data-group": g.name, "data-cause": cause }));
      root.append(svg("path", { d: steps(top_), stroke: colour, class: "fedhem-km-curve fedhem-cif-edge", "data-cause": cause }));
      base = top_;
    } else {
      const lo = g.lower[ci].map(val), hi = g.upper[ci].map(val);
      let band = `M${x(timeline[0])},${y(hi[0])}`;
      for (let j = 1; j < n; j++) band += `H${x(timeline[j])}V${y(hi[j])}`;
      band += `H${x(end)}V${y(lo[n - 1])}`;
      for (let j = n - 1; j >= 1; j--) band += `H${x(timeline[j])}V${y(lo[j - 1])}`;
      band += `H${x(timeline[0])}Z`;
      root.append(svg("path", { d: band, fill: colour, class: "fedhem-km-band", "data-group": g.name, "data-cause": cause }));
      root.append(svg("path", { d: steps(f), stroke: colour, class: "fedhem-km-curve", "data-group": g.name, "data-cause": cause }));
    }
  });
  root.append(svg("text", { x: 4, y: riskTop, class: "fedhem-km-label" }, "number at risk"));
  for (const t of xTicks) {
    root.append(svg("text", { x: x(t), y: riskTop + 16, "text-anchor": "middle", class: "fedhem-km-risk",
      "data-group": g.name, "data-time": t }, atRiskAt(g.table, t)));
  }
  const guide = svg("line", { y1: top, y2: top + plotH, class: "fedhem-km-guide", visibility: "hidden" });
  const overlay = svg("rect", { x: left, y: top, width: plotW, height: plotH, class: "fedhem-km-overlay" });
  root.append(guide, overlay);
  const tip = h("div", { class: "fedhem-km-tooltip", hidden: true });
  const title = h("div", { class: "fedhem-cif-panel-title" }, g.name,
    g.withheld_by && g.withheld_by.length ? h("span", { class: "fedhem-km-mark fedhem-km-withheld" },
      `withheld by ${g.withheld_by.join(", ")}: curves from the other sites`) : null,
    Object.keys(g.merged || {}).length ? h("span", { class: "fedhem-km-mark fedhem-km-merged-note",
      title: "a site merged steps with counts below its minimum into neighbours" },
    `merged steps (${Object.entries(g.merged).map(([s, k]) => `${s}: ${k}`).join(", ")})`) : null);
  const panel = h("div", { class: "fedhem-km-plot fedhem-cif-panel", "data-group": g.name }, title, root, tip);
  const unit = cif.unit ? ` ${cif.unit}` : "";
  const move = (ev) => {
    const box = root.getBoundingClientRect();
    if (!box.width) return;
    const px = ((ev.clientX - box.left) * width) / box.width;
    const t = Math.min(tMax, Math.max(0, ((px - left) / plotW) * tMax));
    guide.setAttribute("x1", x(t)); guide.setAttribute("x2", x(t)); guide.setAttribute("visibility", "visible");
    const j = Math.max(0, stepIndex(timeline, t));
    const rows = t > end
      ? [h("div", {}, `after the last released time (${fmt(end)}${unit})`)]
      : (cif.causes || []).map((cause, ci) => h("div", {},
        h("span", { class: "fedhem-swatch", style: `background:${CAUSE_COLOURS[ci % CAUSE_COLOURS.length]}` }),
        `${cause}: ${fmt(g.cif[ci][j])} [${fmt(g.lower[ci][j])}, ${fmt(g.upper[ci][j])}]`));
    tip.replaceChildren(h("div", { class: "fedhem-km-tip-time" }, `${g.name}, t = ${fmt(t)}${unit}`), ...rows,
      h("div", {}, `at risk ${atRiskAt(g.table, t)}`));
    tip.hidden = false;
    const pbox = panel.getBoundingClientRect();
    tip.style.left = `${Math.min(ev.clientX - pbox.left + 14, Math.max(0, pbox.width - 240))}px`;
    tip.style.top = `${ev.clientY - pbox.top + 10}px`;
  };
  const leave = () => { tip.hidden = true; guide.setAttribute("visibility", "hidden"); };
  overlay.addEventListener("mousemove", move);
  overlay.addEventListener("mouseleave", leave);
  return { panel, cleanup: () => { overlay.removeEventListener("mousemove", move); overlay.removeEventListener("mouseleave", leave); } };
}

function renderCIF(model, el) {
  el.classList.add("fedhem-cif", "fedhem-result-w");
  let cleanups = [];
  const draw = () => {
    cleanups.forEach((f) => f());
    const cif = model.get("cif") || {};
    const mode = model.get("mode") === "curves" ? "curves" : "stacked";
    const groups = cif.groups || [];
    const timeline = cif.timeline || [];
    const tMax = Math.max(timeline.length ? timeline[timeline.length - 1] : 0, 1e-9);
    const panels = groups.map((g) => cifPanel(cif, g, mode, tMax));
    cleanups = panels.map((p) => p.cleanup);
    const toggle = h("div", { class: "fedhem-cif-mode", role: "group" }, ["stacked", "curves"].map((m) => {
      const b = h("button", { type: "button", class: `fedhem-cif-mode-${m}${m === mode ? " fedhem-cif-active" : ""}`,
        "aria-pressed": m === mode ? "true" : "false" }, m === "stacked" ? "stacked" : "curves with 95% CI");
      b.addEventListener("click", () => { model.set("mode", m); model.save_changes(); if (model.fire) model.fire("mode"); });
      return b;
    }));
    const legend = h("div", { class: "fedhem-km-legend fedhem-cif-legend" },
      (cif.causes || []).map((cause, ci) => h("div", { class: "fedhem-km-legend-item", "data-cause": cause },
        h("span", { class: "fedhem-swatch", style: `background:${CAUSE_COLOURS[ci % CAUSE_COLOURS.length]}; height: 10px` }),
        h("b", {}, cause), cause === cif.event_of_interest ? " (event of interest)" : "")),
      mode === "stacked" ? h("div", { class: "fedhem-note" }, "white above the bands: event-free") : null,
      cif.gray ? h("div", { class: "fedhem-cif-gray" },
        `Gray's test for ${cif.gray.cause} across ${cif.group}: χ² = ${fmt(cif.gray.statistic)}, df = ${cif.gray.df}, p = ${fmt(cif.gray.p)}`) : null,
      (cif.not_shown || []).map((g) => h("div", { class: "fedhem-km-legend-item fedhem-km-withheld" },
        h("b", {}, g.name), ` not shown: withheld by ${g.withheld_by.join(", ")}`)));
    const main = h("div", { class: "fedhem-main" }, h("div", { class: "fedhem-title" }, cif.title || ""), toggle,
      h("div", { class: "fedhem-cif-panels" }, panels.map((p) => p.panel)), legend,
      cif.gray_tests ? h("details", { class: "fedhem-more" }, h("summary", {}, "Gray's test for every cause"), renderTable(cif.gray_tests)) : null,
      h("div", { class: "fedhem-note" }, [...(cif.notes || []), "curves pooled from the sites' released event tables (Aalen–Johansen)."].join("; ")));
    el.replaceChildren(main, renderPrivacy(model.get("privacy"), h("div")));
  };
  draw();
  const events = "change:cif change:mode change:privacy";
  model.on(events, draw);
  return () => { cleanups.forEach((f) => f()); model.off(events, draw); };
}

// -- per-site progress -----------------------------------------------------------------------
function renderProgress(model, el) {
  el.classList.add("fedhem-progress");
  let revealed = false;
  let timer = null;
  const draw = () => {
    const sites = model.get("sites") || [];
    const answered = sites.filter((s) => s.status !== "waiting").length;
    const done = model.get("done");
    const head = done
      ? `${model.get("title")}: ${model.get("failed") ? "failed" : "finished"} after ${fmt(model.get("elapsed"))} s`
      : `${model.get("title")}: ${answered}/${sites.length} sites answered${model.get("step") ? ` (step ${model.get("step")})` : ""}`;
    el.replaceChildren(h("div", { class: "fedhem-progress-head" }, head),
      h("progress", { max: Math.max(1, sites.length), value: done ? Math.max(1, sites.length) : answered }),
      h("ul", { class: "fedhem-progress-sites" }, sites.map((s) => h("li", { "data-site": s.site, "data-status": s.status },
        badge(s.status), ` ${s.site}`, s.detail ? h("span", { class: "fedhem-progress-detail" }, ` ${s.detail}`) : ""))));
  };
  const reveal = () => { revealed = true; el.style.display = ""; draw(); };
  el.style.display = "none"; // a query that finishes within the delay never shows
  if (model.get("done")) {
    if (model.get("elapsed") * 1000 >= model.get("delay_ms")) reveal();
  } else {
    timer = setTimeout(() => { if (!model.get("done")) reveal(); }, model.get("delay_ms"));
  }
  const update = () => { if (revealed) draw(); };
  const events = "change:sites change:step change:done change:elapsed change:title";
  model.on(events, update);
  return () => { clearTimeout(timer); model.off(events, update); };
}

function renderStandalonePrivacy(model, el) {
  const draw = () => renderPrivacy(model.get("privacy"), el);
  draw();
  model.on("change:privacy", draw);
  return () => model.off("change:privacy", draw);
}

const VIEWS = { km: renderKM, table: renderResultTables, privacy: renderStandalonePrivacy, progress: renderProgress,
  cif: renderCIF };

export default {
  render({ model, el }) {
    const view = VIEWS[model.get("_kind")];
    if (!view) {
      el.textContent = `unknown FedHem widget '${model.get("_kind")}'`;
      return undefined;
    }
    return view(model, el);
  },
};
