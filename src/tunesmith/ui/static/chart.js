// Line charts drawn as inline SVG: drawChart(svg, [{name, points: [[x, y], ...]}, ...]).
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function yLabel(v, step) {
  // as many decimals as the spacing of the grid lines needs, so neighbouring labels differ
  const digits = Math.max(0, Math.min(6, Math.ceil(-Math.log10(step)) + 1));
  return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-4 && v !== 0) ? v.toExponential(1) : v.toFixed(digits);
}

function bounds(series) {
  const xs = [], ys = [];
  for (const s of series) for (const [x, y] of s.points) { xs.push(x); ys.push(y); }
  if (!xs.length) return null;
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05;
  return {x0, x1, y0: y0 - pad, y1: y1 + pad};
}

function drawAxes(svg, b, box, labels) {
  svg.appendChild(svgEl("rect", {x: box.left, y: box.top, width: box.w, height: box.h, class: "plot"}));
  for (let i = 0; i <= 4; i++) {
    const y = box.top + box.h * i / 4, v = b.y1 - (b.y1 - b.y0) * i / 4;
    svg.appendChild(svgEl("line", {x1: box.left, x2: box.left + box.w, y1: y, y2: y, class: "grid"}));
    svg.appendChild(svgEl("text", {x: box.left - 6, y: y + 4, "text-anchor": "end", class: "tick"},
                          yLabel(v, (b.y1 - b.y0) / 4)));
  }
  const ticks = new Set();
  for (let i = 0; i <= 4; i++) ticks.add(Math.round(b.x0 + (b.x1 - b.x0) * i / 4));
  for (const u of ticks) {
    const x = box.left + (u - b.x0) / (b.x1 - b.x0) * box.w;
    svg.appendChild(svgEl("text", {x, y: box.top + box.h + 16, "text-anchor": "middle", class: "tick"}, u));
  }
  svg.appendChild(svgEl("text", {x: box.left + box.w / 2, y: box.top + box.h + 32, "text-anchor": "middle",
                                 class: "label"}, labels.x));
  svg.appendChild(svgEl("text", {x: 14, y: box.top + box.h / 2, "text-anchor": "middle", class: "label",
                                 transform: `rotate(-90 14 ${box.top + box.h / 2})`}, labels.y));
}

function drawChart(svg, series, labels = {x: "step", y: "loss"}) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const [width, height] = svg.getAttribute("viewBox").split(" ").slice(2).map(Number);
  const box = {left: 64, top: 12, w: width - 64 - 150, h: height - 12 - 44};
  const b = bounds(series);
  const total = series.reduce((n, s) => n + s.points.length, 0);
  svg.dataset.points = total;
  if (!b) {
    svg.appendChild(svgEl("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "label"},
                          "no loss logged yet"));
    return;
  }
  drawAxes(svg, b, box, labels);
  const sx = x => box.left + (x - b.x0) / (b.x1 - b.x0) * box.w;
  const sy = y => box.top + (b.y1 - y) / (b.y1 - b.y0) * box.h;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const points = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("polyline", {points, fill: "none", stroke: color, "stroke-width": 2,
                                       "stroke-dasharray": s.dashed ? "5 4" : "none", class: "series"}));
    if (s.points.length === 1 || s.dots) {
      for (const [x, y] of s.points) svg.appendChild(svgEl("circle", {cx: sx(x), cy: sy(y), r: 3, fill: color}));
    }
    const ly = box.top + 14 + i * 18;
    svg.appendChild(svgEl("line", {x1: box.left + box.w + 12, x2: box.left + box.w + 30, y1: ly - 4, y2: ly - 4,
                                   stroke: color, "stroke-width": 2}));
    svg.appendChild(svgEl("text", {x: box.left + box.w + 34, y: ly, class: "legend"},
                          s.name.length > 18 ? s.name.slice(0, 17) + "…" : s.name));
  });
}

window.drawChart = drawChart;
