/* Shared by the Train and Performance screens: JSON calls, model/dataset pickers, line charts. */
"use strict";

/** fetch JSON; resolves {status, body} (status 0 when the server cannot be reached). */
async function api(url, { method = "GET", json, form } = {}) {
  const init = { method, headers: {} };
  if (json !== undefined) { init.body = JSON.stringify(json); init.headers["Content-Type"] = "application/json"; }
  if (form !== undefined) init.body = form;
  try {
    const res = await fetch(url, init);
    let body = null;
    try { body = await res.json(); } catch { body = null; }
    return { status: res.status, body };
  } catch {
    return { status: 0, body: null };
  }
}

function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function setOptions(select, values, { optional = false, label = (v) => v, keep = true } = {}) {
  const previous = select.value;
  const options = values.map((v) => { const o = document.createElement("option"); o.value = v; o.textContent = label(v); return o; });
  if (optional) { const o = document.createElement("option"); o.value = ""; o.textContent = "(none)"; options.unshift(o); }
  select.replaceChildren(...options);
  if (keep && [...select.options].some((o) => o.value === previous)) select.value = previous;
}

/**
 * A served model's name as users know it: "default-onnx-int8-static" is the model "default"
 * run by ONNX Runtime in int8 ("static": calibrated activations). Names without an engine
 * suffix (PyTorch, classical) come back unchanged with engine "".
 */
function modelParts(full) {
  const m = /^(.+?)-onnx(?:-(fp32|fp16|int8))?(?:-(static|dynamic))?$/.exec(String(full ?? ""));
  if (!m) return { name: String(full ?? ""), engine: "" };
  const precision = m[2] || "fp32";
  return { name: m[1], engine: `ONNX Runtime ${precision}${m[3] === "dynamic" ? " (dynamic)" : ""}` };
}

/** The model's name, with its engine in small print after it (a span). */
function modelNode(full) {
  const { name, engine } = modelParts(full);
  const span = document.createElement("span");
  span.className = "model-name";
  span.title = String(full ?? "");
  span.append(name);
  if (engine) {
    const small = document.createElement("small");
    small.className = "engine";
    small.textContent = ` ${engine}`;
    span.append(small);
  }
  return span;
}

/** Progress line of a Performance job: images of the current model, and which model of how many. */
function evaluationProgressText(p) {
  const n = (p.models || []).length || 1;
  const k = Math.min(p.model_index ?? 0, n - 1);
  const images = p.images ?? (p.total ? p.total / n : undefined);
  const done = Math.max(0, (p.done || 0) - k * (images || 0));
  const which = n > 1 ? ` (model ${k + 1} of ${n})` : "";
  const eta = p.eta_s !== undefined && p.eta_s !== null ? ` · about ${seconds(p.eta_s)} left` : "";
  return `Segmenting with ${p.model ? modelParts(p.model).name : "…"}${which}: ${done} of ${images ?? "?"} images${eta}`;
}

/** Fill every model picker from a GET /api/models answer. */
function fillModelPickers(models) {
  for (const select of document.querySelectorAll("select[data-models]")) {
    if (select.id === "opt-model") {
      const previous = select.value;
      const first = document.createElement("option");
      first.value = "";
      first.textContent = `${modelParts(models.loaded.name).name} (server default)`;
      const others = models.available.filter((n) => n !== models.requested).map((n) => {
        const o = document.createElement("option"); o.value = n; o.textContent = n; return o;
      });
      select.replaceChildren(first, ...others);
      if ([...select.options].some((o) => o.value === previous)) select.value = previous;
    } else {
      setOptions(select, models.available, { optional: select.hasAttribute("data-optional") });
    }
  }
}

async function refreshModels() {
  const res = await api("/api/models");
  if (res.status === 200) fillModelPickers(res.body);
  return res.body;
}

/** Fill every dataset picker from a GET /api/datasets answer. */
function fillDatasetPickers(list) {
  for (const select of document.querySelectorAll("select[data-datasets]")) setOptions(select, list.datasets.map((d) => d.name));
}

/**
 * Draw line series on a canvas.
 * series: [{label, color, points: [[x, y], ...]}]; opts: {xlabel, ymin, ymax, xmin, xmax}
 */
/** A canvas sized for the screen's pixel ratio, cleared: {ctx, width, height, css, ink}. */
function prepareCanvas(canvas, defaultWidth, defaultHeight) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || defaultWidth;
  const height = canvas.clientHeight || defaultHeight;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  ctx.font = "12px system-ui, sans-serif";
  return { ctx, width, height, css, ink: css.getPropertyValue("--muted").trim() || "#666" };
}

function drawLines(canvas, series, opts = {}) {
  const { ctx, width, height, ink } = prepareCanvas(canvas, 420, 200);
  const pts = series.flatMap((s) => s.points).filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y));
  canvas.dataset.points = String(pts.length);
  if (!pts.length) {
    ctx.fillStyle = ink;
    ctx.fillText(opts.empty || "Waiting for the first epoch…", 14, height / 2);
    return;
  }
  const pad = { l: 48, r: 14, t: 12, b: 34 };
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const x0 = opts.xmin ?? Math.min(...xs);
  let x1 = opts.xmax ?? Math.max(...xs);
  if (x1 <= x0) x1 = x0 + 1;
  let y0 = opts.ymin ?? Math.min(...ys);
  let y1 = opts.ymax ?? Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const pw = width - pad.l - pad.r;
  const ph = height - pad.t - pad.b;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * pw;
  const Y = (y) => pad.t + ph - ((y - y0) / (y1 - y0)) * ph;
  ctx.strokeStyle = ink;
  ctx.fillStyle = ink;
  ctx.globalAlpha = 0.25;
  for (let k = 0; k <= 4; k++) { const y = pad.t + (ph * k) / 4; ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke(); }
  ctx.globalAlpha = 1;
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) ctx.fillText((y0 + ((y1 - y0) * k) / 4).toFixed(y1 - y0 < 2 ? 2 : 1), pad.l - 6, Y(y0 + ((y1 - y0) * k) / 4) + 4);
  ctx.textAlign = "center";
  for (const x of [x0, (x0 + x1) / 2, x1]) ctx.fillText(Number.isInteger(x) ? String(x) : x.toFixed(2), X(x), pad.t + ph + 16);
  ctx.fillText(opts.xlabel || "", pad.l + pw / 2, height - 3);
  let legendX = pad.l + 8;
  series.forEach((s) => {
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    const valid = s.points.filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y));
    ctx.beginPath();
    valid.forEach(([x, y], k) => (k ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    for (const [x, y] of valid) { ctx.beginPath(); ctx.arc(X(x), Y(y), 3, 0, 2 * Math.PI); ctx.fill(); }
    if (s.label) { ctx.textAlign = "left"; ctx.fillText(s.label, legendX, pad.t + 12); legendX += ctx.measureText(s.label).width + 18; }
  });
}
