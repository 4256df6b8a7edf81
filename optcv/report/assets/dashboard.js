// optcv's history dashboard: draws every chart of window.OPTCV_HISTORY as inline SVG. No library, no network:
// the page works from disk. One series per machine; a machine's points are joined, two machines' never are.
"use strict";
(function () {
  const W = 720, H = 240, M = { left: 64, right: 16, top: 14, bottom: 34 };
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"];

  // A chart is one string of markup, parsed once, with as few elements per point as show it: a point is a link
  // and a circle, its label an attribute shown by one shared tooltip, a series' whiskers one path. Four elements
  // a point (link, circle, title, whisker) made 1,000 runs of 20 cases take 2.1 s to draw in CI, over the
  // page's 2 s budget.
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
  const esc = s => String(s).replace(/[&<>"]/g, c => ESCAPES[c]);

  function tag(name, attrs, inner) {
    let out = "<" + name;
    for (const k in attrs) {
      const v = attrs[k];
      out += " " + k + '="' + (typeof v === "number" ? v : esc(v)) + '"';
    }
    return inner === undefined ? out + "/>" : out + ">" + inner + "</" + name + ">";
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

  // Four significant digits, large values with a k or M: a tick is never wider than the left margin.
  function tickText(t) {
    const a = Math.abs(t);
    if (a >= 1e6) return Number((t / 1e6).toPrecision(3)) + "M";
    if (a >= 1e4) return Number((t / 1e3).toPrecision(3)) + "k";
    return String(Number(t.toPrecision(4)));
  }

  function draw(chart, colourOf) {
    const e = extent(chart);
    // To a tenth of a pixel: full doubles made the markup three times as long to build and parse.
    const X = x => Math.round(10 * (M.left + (e.xs ? x / e.xs : 0.5) * (W - M.left - M.right))) / 10;
    const Y = y => Math.round(10 * (H - M.bottom - (y - e.lo) / (e.hi - e.lo) * (H - M.top - M.bottom))) / 10;
    // The unit is in the chart's heading: a rotated label longer than the plot's height was cut.
    const axes = ticks(e.lo, e.hi, 5).map(t =>
      tag("line", { x1: M.left, x2: W - M.right, y1: Y(t), y2: Y(t), class: t === 0 ? "zero" : "grid" }) +
      tag("text", { x: M.left - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, esc(tickText(t))));
    const parts = [tag("g", { class: "axes" }, axes.join(""))];
    for (const s of chart.series) parts.push(series(s, colourOf(s.machine), chart.unit, X, Y));
    const every = Math.max(1, Math.ceil((e.xs + 1) / 6));  // six commits at most: 8 overlapped in a 560-px chart
    const shown = chart.x_labels.filter(([x]) => x % every === 0);
    // The outermost labels are anchored inwards, so a commit at either edge of the plot is not cut in half.
    const anchor = i => shown.length > 1 && i === 0 ? "start" : shown.length > 1 && i === shown.length - 1 ? "end" : "middle";
    const labels = shown.map(([x, commit], i) =>
      tag("text", { x: X(x), y: H - M.bottom + 16, class: "tick", "text-anchor": anchor(i) }, esc(commit)));
    parts.push(tag("g", { class: "axes" }, labels.join("")));
    document.getElementById(chart.id).insertAdjacentHTML("beforeend", tag("svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${chart.case} ${chart.metric}` },
      parts.join("")));
  }

  function series(s, colour, unit, X, Y) {
    const out = [];
    const banded = s.points.filter(p => p.lo !== null && p.hi !== null);
    if (banded.length > 1) {
      const top = banded.map(p => `${X(p.x)},${Y(p.hi)}`), bottom = banded.slice().reverse().map(p => `${X(p.x)},${Y(p.lo)}`);
      out.push(tag("polygon", { points: top.concat(bottom).join(" "), class: "band", fill: colour }));
    }
    if (banded.length) {
      const d = banded.map(p => `M${X(p.x)} ${Y(p.lo)}V${Y(p.hi)}`).join("");
      out.push(tag("path", { d: d, class: "whisker", stroke: colour }));
    }
    out.push(tag("polyline", { points: s.points.map(p => `${X(p.x)},${Y(p.y)}`).join(" "), class: "line", stroke: colour }));
    for (const st of s.steps) {
      out.push(tag("line", { x1: X(st.x - 0.5), x2: X(st.x - 0.5), y1: M.top, y2: H - M.bottom,
                             class: st.worse ? "step worse" : "step better", "data-change": st.change_pct }));
    }
    for (const p of s.points) {
      const label = `${p.commit || "no commit"} · ${p.time} · ${p.kind}\n${p.y.toPrecision(4)} ${unit}` +
        (p.lo !== null ? ` (${p.lo.toPrecision(4)} … ${p.hi.toPrecision(4)})` : "") + (p.verdict ? `\n${p.verdict}` : "");
      out.push(tag("a", { href: `runs/${p.run}.html`, "aria-label": label },
        tag("circle", { cx: X(p.x), cy: Y(p.y), r: p.failed ? 5.5 : 3.5, fill: colour,
                        class: p.failed ? "point failed" : "point", "data-run": p.run })));
    }
    return tag("g", { class: "series", "data-machine": s.machine, "data-points": s.points.length }, out.join(""));
  }

  function tooltip(charts) {
    const tip = document.createElement("div");
    tip.className = "tip"; tip.hidden = true;
    document.body.appendChild(tip);
    charts.addEventListener("mouseover", ev => {
      const link = ev.target.closest && ev.target.closest("a[aria-label]");
      if (!link) { tip.hidden = true; return; }
      tip.textContent = link.getAttribute("aria-label");
      tip.style.left = `${ev.pageX + 12}px`; tip.style.top = `${ev.pageY + 12}px`;
      tip.hidden = false;
    });
    charts.addEventListener("mouseleave", () => { tip.hidden = true; });
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
    tooltip(document.getElementById("charts"));
    document.body.dataset.rendered = String(drawn);
    document.body.dataset.renderMs = String(Math.round(performance.now()));  // since navigation began
  }

  window.addEventListener("error", ev => {
    document.body.dataset.errors = (document.body.dataset.errors || "") + ev.message + "\n";
  });
  document.addEventListener("DOMContentLoaded", render);
})();
