/* nucleiseg web page: plain JavaScript, no build step, no third-party code. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const TABLE_COLUMNS = [
  ["label", "Id", 0], ["area", "Area (px)", 0], ["area_um2", "Area (µm²)", 2], ["centroid_x", "x", 1], ["centroid_y", "y", 1],
  ["perimeter", "Perimeter", 1], ["perimeter_um", "Perimeter (µm)", 2], ["eccentricity", "Eccentricity", 3], ["solidity", "Solidity", 3],
  ["mean_intensity", "Mean intensity", 1],
];
const ZOOM_STEPS = [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16];
const state = { queue: [], busy: false, limits: null };

/* ---------- small helpers ---------- */

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function plainError(status, body, fallback) {
  const detail = body && body.error ? body.error : fallback;
  switch (status) {
    case 0: return "Could not reach the nucleiseg server. Is it still running?";
    case 413: return `Too large: ${detail}.`;
    case 415: return `Not a supported image: ${detail}.`;
    case 422: return `The server could not use this input: ${detail}.`;
    case 503: return "The server is busy with other images. Please try again in a moment.";
    default: return `Something went wrong (HTTP ${status}): ${detail}.`;
  }
}

function b64ToBlob(b64, type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

function formOptions() {
  const form = new FormData();
  if ($("#opt-model").value) form.append("model", $("#opt-model").value);
  if ($("#opt-tta").checked) form.append("tta", "true");
  for (const [id, name] of [["#opt-threshold", "threshold"], ["#opt-min-size", "min_size"], ["#opt-min-confidence", "min_confidence"],
                            ["#opt-diameter", "diameter"], ["#opt-pixel-size", "pixel_size"],
                            ["#opt-channel", "channel"], ["#opt-axes", "axes"]]) {
    const v = $(id).value.trim();
    if (v !== "") form.append(name, v);
  }
  return form;
}

/** POST a form with XMLHttpRequest (for upload progress); resolves {status, body}. */
function post(url, form, { onUpload, responseType = "json" } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.responseType = responseType;
    if (onUpload) {
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onUpload(e.loaded / e.total); };
      xhr.upload.onload = () => onUpload(1);
    }
    xhr.onload = async () => {
      let body = xhr.response;
      if (responseType === "blob" && xhr.status !== 200 && body) {
        try { body = JSON.parse(await body.text()); } catch { body = null; }
      }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => resolve({ status: 0, body: null });
    xhr.send(form);
  });
}

/* ---------- tabs and server info ---------- */

function selectTab(name) {
  for (const tab of ["segment", "evaluate", "train", "performance"]) {
    const on = tab === name;
    $(`#tab-${tab}`).classList.toggle("active", on);
    $(`#tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`#panel-${tab}`).hidden = !on;
  }
}

async function loadServerInfo() {
  try {
    const [health, models] = await Promise.all([fetch("/api/health"), fetch("/api/models")].map((p) => p.then((r) => r.json())));
    state.limits = health.limits;
    const mb = (health.limits.max_upload_bytes / 1048576).toFixed(0);
    const mp = (health.limits.max_pixels / 1e6).toFixed(0);
    $("#limits-text").textContent = `PNG, TIFF, JPEG or BMP · up to ${mb} MB and ${mp} megapixels per image`;
    $("#server-text").replaceChildren("model: ", modelNode(models.loaded.name));
    fillModelPickers(models);
    $("#server-dot").classList.add("ok");
  } catch {
    $("#server-text").textContent = "server not reachable";
    $("#server-dot").classList.add("bad");
  }
}

/* ---------- progress ---------- */

function setProgress(text, fraction) {
  $("#progress").hidden = false;
  $("#progress-text").textContent = text;
  const bar = $("#progress-bar");
  bar.classList.toggle("indeterminate", fraction === null);
  bar.style.width = fraction === null ? "" : `${Math.round(fraction * 100)}%`;
}

/* ---------- segmentation queue ---------- */

function enqueue(files) {
  showError("");
  const list = Array.from(files);
  if (!list.length) return;
  $("#empty-state")?.remove();
  for (const file of list) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".result-name", card).textContent = file.name;
    $(".result-meta", card).textContent = `${(file.size / 1024).toFixed(0)} kB · queued`;
    card.dataset.name = file.name;
    $("#results").prepend(card);
    state.queue.push({ file, card });
  }
  if (!state.busy) runQueue();
}

async function runQueue() {
  state.busy = true;
  const total = state.queue.length;
  let done = 0;
  while (state.queue.length) {
    const { file, card } = state.queue.shift();
    done += 1;
    const label = total > 1 ? `Image ${done} of ${total}: ` : "";
    $(".card-status", card).textContent = "Uploading…";
    card.classList.add("running");
    const form = formOptions();
    form.append("file", file, file.name);
    const res = await post("/api/segment", form, {
      onUpload: (f) => {
        if (f < 1) setProgress(`${label}uploading ${file.name} (${Math.round(f * 100)}%)`, f);
        else { setProgress(`${label}segmenting ${file.name}…`, null); $(".card-status", card).textContent = "Segmenting…"; }
      },
    });
    card.classList.remove("running");
    if (res.status === 200 && res.body) {
      renderResult(card, res.body, file);
    } else {
      const message = plainError(res.status, res.body, "no details");
      $(".card-status", card).textContent = message;
      card.classList.add("failed");
      $(".result-meta", card).textContent = "failed";
      showError(`${file.name}: ${message}`);
    }
  }
  $("#progress").hidden = true;
  state.busy = false;
}

/* ---------- one result card ---------- */

function renderResult(card, data, file) {
  card.classList.add("done");
  $(".card-status", card).hidden = true;
  $(".result-body", card).hidden = false;
  $(".count", card).textContent = String(data.count);
  const secs = data.timings && data.timings.total_server ? `${data.timings.total_server.toFixed(2)} s` : "";
  $(".result-meta", card).replaceChildren(
    `${data.width} × ${data.height} px · ${data.dtype}${data.channels > 1 ? ` · ${data.channels} channels` : ""} · model `,
    modelNode(data.model), secs ? ` · ${secs}` : "");
  const original = `data:image/png;base64,${data.image_png}`;
  $(".original-img", card).src = original;
  $(".base-img", card).src = original;
  $(".overlay-img", card).src = `data:image/png;base64,${data.overlay_png}`;
  setupViewer(card, data.width, data.height);
  renderStats(card, data);
  renderTable(card, data.measurements);
  drawHistogram($(".histogram", card), data.measurements.map((r) => r.area));
  setupDownloads(card, data, file);
}

function setupViewer(card, width, height) {
  const overlay = $(".overlay-img", card);
  const toggle = $(".overlay-toggle", card);
  const opacity = $(".opacity", card);
  const applyOverlay = () => { overlay.style.opacity = toggle.checked ? String(opacity.value / 100) : "0"; };
  toggle.addEventListener("change", applyOverlay);
  opacity.addEventListener("input", () => { toggle.checked = true; applyOverlay(); });
  applyOverlay();

  const viewports = [...card.querySelectorAll(".viewport")];
  const stages = [...card.querySelectorAll(".stage")];
  let zoom = null; // null = fit the viewport
  const maxHeight = 520;
  const fitScale = () => Math.min(8, (viewports[0].clientWidth - 2) / width, maxHeight / height) || 1;
  const apply = () => {
    const fit = fitScale();
    const scale = zoom === null ? fit : zoom;
    const vpHeight = `${Math.max(160, Math.round(height * fit) + 2)}px`;
    for (const vp of viewports) vp.style.height = vpHeight;
    for (const s of stages) {
      s.style.width = `${Math.round(width * scale)}px`;
      s.style.height = `${Math.round(height * scale)}px`;
      s.classList.toggle("pixelated", scale >= 2);
    }
    $(".zoom-level", card).textContent = `${Math.round(scale * 100)}%`;
  };
  const step = (dir) => {
    const cur = zoom === null ? fitScale() : zoom;
    const next = dir > 0 ? ZOOM_STEPS.find((z) => z > cur + 1e-6) : [...ZOOM_STEPS].reverse().find((z) => z < cur - 1e-6);
    if (next !== undefined) { zoom = next; apply(); }
  };
  $(".zoom-in", card).addEventListener("click", () => step(1));
  $(".zoom-out", card).addEventListener("click", () => step(-1));
  $(".zoom-fit", card).addEventListener("click", () => { zoom = null; apply(); });
  for (const vp of viewports) {
    vp.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY < 0 ? 1 : -1); }, { passive: false });
    vp.addEventListener("scroll", () => {
      for (const other of viewports) {
        if (other !== vp && (other.scrollLeft !== vp.scrollLeft || other.scrollTop !== vp.scrollTop)) {
          other.scrollLeft = vp.scrollLeft;
          other.scrollTop = vp.scrollTop;
        }
      }
    });
  }
  window.addEventListener("resize", () => apply());
  apply();
}

function renderStats(card, data) {
  const areas = data.measurements.map((r) => r.area).sort((a, b) => a - b);
  const mean = areas.length ? areas.reduce((s, a) => s + a, 0) / areas.length : null;
  const median = areas.length ? areas[Math.floor(areas.length / 2)] : null;
  const cover = areas.length ? (100 * areas.reduce((s, a) => s + a, 0)) / (data.width * data.height) : 0;
  const items = [
    ["Nuclei", String(data.count)], ["Mean area", `${fmt(mean, 0)} px`], ["Median area", `${fmt(median, 0)} px`],
    ["Covered", `${cover.toFixed(1)} %`],
    [data.diameter_source === "given" ? "Diameter (given)" : "Estimated diameter", data.diameter ? `${fmt(data.diameter, 1)} px` : "–"],
    ["Zoom used", typeof data.scale === "number" ? `×${fmt(data.scale, 2)}` : "–"],
    [data.pixel_size_source === "option" ? "Pixel size (given)" : "Pixel size",
     data.pixel_size_um ? `${fmt(data.pixel_size_um, 3)} µm` : "unknown"],
  ];
  if (data.pixel_size_um && median !== null) items.splice(3, 0, ["Median area", `${fmt(median * data.pixel_size_um ** 2, 1)} µm²`]);
  const box = $(".stats", card);
  box.replaceChildren(...items.map(([k, v]) => {
    const div = document.createElement("div");
    const b = document.createElement("b");
    b.textContent = v;
    const span = document.createElement("span");
    span.textContent = k;
    div.append(b, span);
    return div;
  }));
}

function renderTable(card, rows) {
  const table = $(".measurements", card);
  const columns = TABLE_COLUMNS.filter(([key]) => rows.length === 0 || key in rows[0]);
  let sortKey = "label";
  let ascending = true;
  const headRow = document.createElement("tr");
  for (const [key, title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    th.dataset.key = key;
    th.setAttribute("data-testid", `sort-${key}`);
    th.tabIndex = 0;
    const sortBy = () => {
      ascending = sortKey === key ? !ascending : true;
      sortKey = key;
      fill();
    };
    th.addEventListener("click", sortBy);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(); } });
    headRow.append(th);
  }
  $("thead", table).replaceChildren(headRow);
  const fill = () => {
    const sorted = [...rows].sort((a, b) => ((a[sortKey] ?? -Infinity) - (b[sortKey] ?? -Infinity)) * (ascending ? 1 : -1));
    for (const th of headRow.children) {
      const on = th.dataset.key === sortKey;
      th.setAttribute("aria-sort", on ? (ascending ? "ascending" : "descending") : "none");
    }
    const body = $("tbody", table);
    body.replaceChildren(...sorted.map((r) => {
      const tr = document.createElement("tr");
      for (const [key, , digits] of columns) {
        const td = document.createElement("td");
        td.textContent = fmt(r[key], digits);
        tr.append(td);
      }
      return tr;
    }));
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = columns.length;
      td.className = "none";
      td.textContent = "No nuclei found.";
      tr.append(td);
      body.append(tr);
    }
  };
  fill();
}

function drawHistogram(canvas, values) {
  const { ctx, width, height, css, ink } = prepareCanvas(canvas, 360, 220);  // common.js
  const accent = css.getPropertyValue("--accent").trim() || "#2563eb";
  ctx.fillStyle = ink;
  if (!values.length) {
    ctx.fillText("No nuclei to plot.", 12, height / 2);
    return;
  }
  const pad = { l: 40, r: 14, t: 10, b: 34 };
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const nb = Math.max(1, Math.min(24, Math.ceil(Math.sqrt(values.length) * 1.5)));
  const span = hi > lo ? hi - lo : 1;
  const counts = new Array(nb).fill(0);
  for (const v of values) counts[Math.min(nb - 1, Math.floor(((v - lo) / span) * nb))] += 1;
  const top = Math.max(...counts);
  const pw = width - pad.l - pad.r;
  const ph = height - pad.t - pad.b;
  ctx.strokeStyle = ink;
  ctx.globalAlpha = 0.25;
  for (let k = 0; k <= 4; k++) {
    const y = pad.t + ph - (ph * k) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(pad.l + pw, y); ctx.stroke();
  }
  ctx.globalAlpha = 1;
  ctx.fillStyle = accent;
  const bw = pw / nb;
  counts.forEach((c, i) => {
    const h = (ph * c) / top;
    ctx.fillRect(pad.l + i * bw + 1, pad.t + ph - h, Math.max(1, bw - 2), h);
  });
  ctx.fillStyle = ink;
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const v = Math.round((top * k) / 4);
    ctx.fillText(String(v), pad.l - 6, pad.t + ph - (ph * k) / 4 + 4);
  }
  for (const [frac, v, align] of [[0, lo, "left"], [0.5, lo + span / 2, "center"], [1, hi, "right"]]) {
    ctx.textAlign = align;
    ctx.fillText(String(Math.round(v)), pad.l + pw * frac, pad.t + ph + 16);
  }
  ctx.textAlign = "center";
  ctx.fillText("area (pixels)", pad.l + pw / 2, height - 4);
  ctx.save();
  ctx.translate(11, pad.t + ph / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("nuclei", 0, 0);
  ctx.restore();
}

function setupDownloads(card, data, file) {
  const stem = data.name || "image";
  $(".dl-labels", card).disabled = !data.labels_png;
  $(".dl-labels", card).addEventListener("click", () => saveBlob(b64ToBlob(data.labels_png, "image/png"), `${stem}_masks.png`));
  $(".dl-overlay", card).addEventListener("click", () => saveBlob(b64ToBlob(data.overlay_png, "image/png"), `${stem}_overlay.png`));
  $(".dl-csv", card).addEventListener("click", () => saveBlob(new Blob([data.measurements_csv], { type: "text/csv" }), `${stem}_measurements.csv`));
  const zipButton = $(".dl-zip", card);
  zipButton.addEventListener("click", async () => {
    zipButton.disabled = true;
    zipButton.textContent = "Preparing ZIP…";
    const form = formOptions();
    form.append("file", file, file.name);
    const res = await post("/api/segment?format=zip", form, { responseType: "blob" });
    zipButton.disabled = false;
    zipButton.textContent = "ZIP of everything";
    if (res.status === 200) saveBlob(res.body, `${stem}_nucleiseg.zip`);
    else showError(`${file.name}: ${plainError(res.status, res.body, "could not build the ZIP")}`);
  });
}

/* ---------- evaluate tab ---------- */

function updateEvalButton() {
  $("#eval-run").disabled = !($("#eval-image").files.length && $("#eval-gt").files.length);
}

async function runEvaluation() {
  showError("");
  const image = $("#eval-image").files[0];
  const truth = $("#eval-gt").files[0];
  const form = formOptions();
  form.append("file", image, image.name);
  form.append(truth.name.toLowerCase().endsWith(".zip") ? "gt_zip" : "gt", truth, truth.name);
  $("#eval-run").disabled = true;
  $("#eval-progress").hidden = false;
  const res = await post("/api/evaluate", form);
  $("#eval-progress").hidden = true;
  updateEvalButton();
  const box = $("#eval-result");
  if (res.status !== 200 || !res.body) {
    box.replaceChildren();
    showError(`${image.name}: ${plainError(res.status, res.body, "no details")}`);
    return;
  }
  renderEvaluation(box, res.body);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function renderEvaluation(box, d) {
  const metric = (name, value, testid, hint) => el("div", { class: "metric", title: hint },
    el("b", { "data-testid": testid }, fmt(value, 3)), el("span", {}, name));
  const metrics = el("div", { class: "metrics" },
    metric("Competition score", d.competition_score, "eval-score", "mean over IoU 0.50…0.95 of TP/(TP+FP+FN)"),
    metric("AP @ IoU 0.5", d.ap50, "eval-ap50", "TP/(TP+FP+FN) at IoU 0.5"),
    metric("F1 @ 0.5", d.f1, "eval-f1", "2TP/(2TP+FP+FN) at IoU 0.5"),
    metric("Panoptic quality", d.pq, "eval-pq", "sum of matched IoU / (TP + FP/2 + FN/2)"),
    metric("Precision", d.precision, "eval-precision", "TP/(TP+FP) at IoU 0.5"),
    metric("Recall", d.recall, "eval-recall", "TP/(TP+FN) at IoU 0.5"));
  const counts = el("p", { class: "counts", "data-testid": "eval-counts" },
    `${d.n_true} true nuclei, ${d.n_pred} predicted · at IoU 0.5: ${d.tp} matched, ${d.fp} extra, ${d.fn} missed · foreground IoU ${fmt(d.pixel.foreground_iou, 3)}`);
  const head = el("tr", {}, ...["IoU", "TP", "FP", "FN", "Score"].map((t) => el("th", {}, t)));
  const rows = d.per_threshold.map((r) => el("tr", {}, el("td", {}, fmt(r.threshold, 2)), el("td", {}, String(r.tp)),
    el("td", {}, String(r.fp)), el("td", {}, String(r.fn)), el("td", {}, fmt(r.score, 3))));
  const table = el("table", { class: "measurements compact", "data-testid": "eval-thresholds" }, el("thead", {}, head), el("tbody", {}, ...rows));
  const diff = el("img", { class: "diff-img", alt: "difference between prediction and ground truth", "data-testid": "eval-diff" });
  diff.src = `data:image/png;base64,${d.diff_png}`;
  const legend = el("ul", { class: "legend" },
    el("li", {}, el("i", { class: "sw blue" }), "predicted only (extra)"),
    el("li", {}, el("i", { class: "sw red" }), "ground truth only (missed)"),
    el("li", {}, el("i", { class: "sw green" }), "both"),
    el("li", {}, el("i", { class: "sw yellow" }), "predicted outlines"));
  const card = el("article", { class: "card result done" },
    el("header", { class: "result-head" },
      el("div", {}, el("h2", { class: "result-name" }, `${d.name} vs ${d.gt_name}`),
        el("p", { class: "result-meta" }, `${d.width} × ${d.height} px · model `, modelNode(d.model), ` · ${d.timings.total_server.toFixed(2)} s`))),
    metrics, counts,
    el("div", { class: "eval-body" },
      el("figure", { class: "diff" }, el("figcaption", {}, "Difference view"), el("div", { class: "diff-scroll" }, diff), legend),
      el("div", { class: "table-box" }, el("h3", {}, "Per IoU threshold"), table)));
  box.replaceChildren(card);
}

/* ---------- wiring ---------- */

function init() {
  $("#tab-segment").addEventListener("click", () => selectTab("segment"));
  $("#tab-evaluate").addEventListener("click", () => selectTab("evaluate"));
  $("#tab-train").addEventListener("click", () => { selectTab("train"); Train.show(); });
  $("#tab-performance").addEventListener("click", () => { selectTab("performance"); Performance.show(); });
  const input = $("#file-input");
  input.addEventListener("change", () => { enqueue(input.files); input.value = ""; });
  const zone = $("#dropzone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => enqueue(e.dataTransfer.files));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#eval-image").addEventListener("change", updateEvalButton);
  $("#eval-gt").addEventListener("change", updateEvalButton);
  $("#eval-run").addEventListener("click", runEvaluation);
  loadServerInfo();
}

document.addEventListener("DOMContentLoaded", init);
