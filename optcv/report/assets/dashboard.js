// optcv's history dashboard: draws every chart of window.OPTCV_HISTORY as inline SVG. No library, no network:
// the page works from disk. One series per machine; a machine's points are joined, two machines' never are.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 720, H = 240, M = { left: 64, right: 16, top: 14, bottom: 34 };
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function extent(chart) {
    let lo = Infinity, hi = -Infinity, xs = 0;
    for (const s of chart.series) for (const p of s.points) {
      lo = Math.min(lo, p.lo ?? p.y, p.y); hi = Math.max(hi, p.hi ?? p.y, p.y); xs = Math.max(xs, p.x);
    }
    if (chart.metric === "change_pct") { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1;
    return { lo: lo - pad, hi: hi + pad, xs: Math.max(xs, 1) };
  }

  function ticks(lo, hi, count) {
    const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    const nice = [1, 2, 5, 10].map(m => m * step).find(s => (hi - lo) / s <= count) || step * 10;
    const out = [];
    for (let v = Math.ceil(lo / nice) * nice; v <= hi; v += nice) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function draw(chart, colourOf) {
    const box = document.getElementById(chart.id);
    const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                            "aria-label": `${chart.case} ${chart.metric}` }, box);
    const e = extent(chart);
    const X = x => M.left + (e.xs ? x / e.xs : 0.5) * (W - M.left - M.right);
    const Y = y => H - M.bottom - (y - e.lo) / (e.hi - e.lo) * (H - M.top - M.bottom);
    const axes = el("g", { class: "axes" }, svg);
    for (const t of ticks(e.lo, e.hi, 5)) {
      el("line", { x1: M.left, x2: W - M.right, y1: Y(t), y2: Y(t), class: t === 0 ? "zero" : "grid" }, axes);
      el("text", { x: M.left - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, axes).textContent = t;
    }
    el("text", { x: 12, y: M.top + (H - M.top - M.bottom) / 2, class: "unit",
                 transform: `rotate(-90 12 ${M.top + (H - M.top - M.bottom) / 2})` }, axes).textContent = chart.unit;
    for (const s of chart.series) {
      const g = el("g", { class: "series", "data-machine": s.machine, "data-points": s.points.length }, svg);
      const colour = colourOf(s.machine);
      const banded = s.points.filter(p => p.lo !== null && p.hi !== null);
      if (banded.length > 1) {
        const top = banded.map(p => `${X(p.x)},${Y(p.hi)}`), bottom = banded.slice().reverse().map(p => `${X(p.x)},${Y(p.lo)}`);
        el("polygon", { points: top.concat(bottom).join(" "), class: "band", fill: colour }, g);
      }
      for (const p of banded) el("line", { x1: X(p.x), x2: X(p.x), y1: Y(p.lo), y2: Y(p.hi), class: "whisker", stroke: colour }, g);
      el("polyline", { points: s.points.map(p => `${X(p.x)},${Y(p.y)}`).join(" "), class: "line", stroke: colour }, g);
      for (const st of s.steps) {
        el("line", { x1: X(st.x - 0.5), x2: X(st.x - 0.5), y1: M.top, y2: H - M.bottom,
                     class: st.worse ? "step worse" : "step better", "data-change": st.change_pct }, g);
      }
      for (const p of s.points) {
        const a = el("a", { href: `runs/${p.run}.html` }, g);
        el("circle", { cx: X(p.x), cy: Y(p.y), r: p.failed ? 5.5 : 3.5, fill: colour,
                       class: p.failed ? "point failed" : "point", "data-run": p.run }, a);
        el("title", {}, a).textContent = `${p.commit || "no commit"} · ${p.time} · ${p.kind}\n` +
          `${p.y.toPrecision(4)} ${chart.unit}` + (p.lo !== null ? ` (${p.lo.toPrecision(4)} … ${p.hi.toPrecision(4)})` : "") +
          (p.verdict ? `\n${p.verdict}` : "");
      }
    }
    const labels = el("g", { class: "axes" }, svg);
    const every = Math.max(1, Math.ceil((e.xs + 1) / 8));
    for (const [x, commit] of chart.x_labels) {
      if (x % every === 0) el("text", { x: X(x), y: H - M.bottom + 16, class: "tick", "text-anchor": "middle" }, labels).textContent = commit;
    }
  }

  function render() {
    const data = window.OPTCV_HISTORY;
    const colours = {};
    data.machines.forEach((m, i) => { colours[m.key] = COLOURS[i % COLOURS.length]; });
    const legend = document.getElementById("machines");
    for (const m of data.machines) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch"; swatch.style.background = colours[m.key];
      item.appendChild(swatch); item.appendChild(document.createTextNode(` ${m.label} — ${m.runs} runs`));
      legend.appendChild(item);
    }
    let drawn = 0;
    for (const chart of data.charts) { draw(chart, k => colours[k]); drawn += 1; }
    const filter = document.getElementById("filter");
    filter.addEventListener("input", () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      for (const section of document.querySelectorAll("section.case")) {
        const name = section.dataset.case.toLowerCase();
        section.hidden = !words.every(w => name.includes(w));
      }
    });
    document.body.dataset.rendered = String(drawn);
    document.body.dataset.renderMs = String(Math.round(performance.now()));  // since navigation began
  }

  window.addEventListener("error", ev => {
    document.body.dataset.errors = (document.body.dataset.errors || "") + ev.message + "\n";
  });
  document.addEventListener("DOMContentLoaded", render);
})();
