/* Train screen: datasets (with upload), the training form, the live job view and the trained models. */
"use strict";

const Train = (() => {
  let recipes = {};
  let bundled = ["default"];  // models a run can start from, besides finished runs and "scratch"
  const SCRATCH = "scratch";
  let source = null;       // EventSource of the followed job
  let followed = null;     // id of the followed job
  let loaded = false;

  async function show() {
    if (!loaded) {
      loaded = true;
      await loadRecipes();
      await resumeJob();
    }
    await Promise.all([loadDatasets(), loadRuns()]);
  }

  /* ---------- datasets ---------- */

  async function loadDatasets() {
    const res = await api("/api/datasets");
    if (res.status !== 200) { showError(plainError(res.status, res.body, "could not list the datasets")); return; }
    fillDatasetPickers(res.body);
    const limits = res.body.limits;
    $("#dataset-upload-box").hidden = !res.body.uploads;
    $("#dataset-limits").textContent = `(up to ${(limits.max_zip_bytes / 1048576).toFixed(0)} MB, ${limits.max_files} files)`;
    const box = $("#dataset-list");
    box.replaceChildren(...res.body.datasets.map(datasetCard));
    if (!res.body.datasets.length) box.append(el("p", { class: "hint" }, "No datasets yet: start the server with --data DIR or upload a ZIP."));
    updateCommand();
    for (const d of res.body.datasets) {
      if (!d.summary && !d.error) {
        const full = await api(`/api/datasets/${encodeURIComponent(d.name)}`);
        if (full.status === 200) box.querySelector(`[data-name="${CSS.escape(d.name)}"]`)?.replaceWith(datasetCard(full.body));
      }
    }
  }

  function datasetCard(d) {
    const s = d.summary;
    const facts = s
      ? `${s.images} images (${s.images_with_masks} with masks) · ${s.nuclei} nuclei · sizes ${Object.keys(s.sizes).slice(0, 3).join(", ")}${Object.keys(s.sizes).length > 3 ? "…" : ""}` +
        (s.diameter && s.diameter.median ? ` · median diameter ${s.diameter.median} px` : "")
      : d.error || "summarising…";
    const thumbs = el("div", { class: "thumbs" }, ...d.thumbnails.map((src) => el("img", { src, alt: `sample of ${d.name}`, loading: "lazy" })));
    return el("div", { class: "dataset", "data-name": d.name, "data-testid": "dataset-card" },
      el("div", { class: "dataset-head" }, el("b", {}, d.name), el("span", { class: "badge" }, d.source)),
      el("p", { class: "result-meta", "data-testid": "dataset-summary" }, facts), thumbs);
  }

  async function upload() {
    const input = $("#dataset-upload");
    const file = input.files[0];
    if (!file) return;
    showError("");
    const form = new FormData();
    form.append("file", file, file.name);
    $("#dataset-limits").textContent = `uploading ${file.name}…`;
    const res = await api("/api/datasets", { method: "POST", form });
    input.value = "";
    if (res.status !== 201) showError(`${file.name}: ${plainError(res.status, res.body, "upload refused")}`);
    await loadDatasets();
    if (res.status === 201) { $("#train-dataset").value = res.body.name; updateCommand(); }
  }

  /* ---------- form ---------- */

  async function loadRecipes() {
    const res = await api("/api/recipes");
    if (res.status !== 200) return;
    const training = res.body.training || { available: true };
    $("#train-unavailable").hidden = training.available;
    $("#train-unavailable").textContent = training.message;
    $("#train-form").hidden = !training.available;
    if (!training.available) return;
    recipes = res.body.recipes;
    bundled = (res.body.start_from || ["default", SCRATCH]).filter((m) => m !== SCRATCH)
      .sort((a, b) => (a !== "default") - (b !== "default") || a.localeCompare(b));
    setOptions($("#train-arch"), res.body.architectures);
    setOptions($("#train-recipe"), Object.keys(recipes), { label: (n) => `${n} (${recipes[n].source})` });
    if (recipes["small-cpu"]) $("#train-recipe").value = "small-cpu";
    $("#train-persist").textContent = res.body.runs_persistent ? "" :
      "Runs are kept in a temporary folder: start the server with --runs DIR to keep them after it stops.";
    recipeChanged();
  }

  function recipeChanged() {
    const r = recipes[$("#train-recipe").value];
    if (!r) return;
    $("#train-arch").value = r.arch;
    $("#train-epochs").placeholder = r.epochs ? `recipe: ${r.epochs}` : "recipe";
    if (r.max_minutes) $("#train-minutes").value = r.max_minutes;
    updateCommand();
  }

  function fillStartFrom(runs) {
    const choices = [...bundled, ...runs.filter((r) => r.state !== "failed").map((r) => r.name), SCRATCH];
    setOptions($("#train-from"), choices, { label: (v) => v === SCRATCH ? "nothing: train the recipe from scratch" :
      bundled.includes(v) ? `${v} (bundled)` : `${v} (trained here)` });
    if (!$("#train-from").dataset.chosen) $("#train-from").value = bundled.includes("default") ? "default" : choices[0];
    showScratchFields();
  }

  function showScratchFields() {
    const scratch = $("#train-from").value === SCRATCH;
    for (const label of document.querySelectorAll("#panel-train .scratch-only")) label.hidden = !scratch;
    $("#train-start").textContent = scratch ? "Start training" : "Start fine-tuning";
  }

  function startFromChanged() {
    showScratchFields();
    updateCommand();
  }

  function formBody() {
    const body = { dataset: $("#train-dataset").value, recipe: $("#train-recipe").value, arch: $("#train-arch").value,
      minutes: Number($("#train-minutes").value), start_from: $("#train-from").value || "default" };
    const epochs = $("#train-epochs").value.trim();
    if (epochs && body.start_from === SCRATCH) body.epochs = Number(epochs);
    return body;
  }

  function updateCommand(command) {
    if (command) { $("#train-command").textContent = command; return; }
    const b = formBody();
    if (b.start_from !== SCRATCH) {
      const parent = bundled.includes(b.start_from) ? b.start_from : `RUNS/${b.start_from}`;
      $("#train-command").textContent = `nucleiseg train --from ${parent} --data <${b.dataset || "dataset"}> ` +
        `--max-minutes ${b.minutes} --out RUNS/<name>`;
      return;
    }
    const r = recipes[b.recipe];
    const config = r && r.source !== "built-in" ? r.source : `<${b.recipe} recipe>`;
    $("#train-command").textContent = `nucleiseg train --config ${config} --data <${b.dataset || "dataset"}> --model ${b.arch} ` +
      `--max-minutes ${b.minutes}${b.epochs ? ` --epochs ${b.epochs}` : ""} --out RUNS/<name> && nucleiseg validate RUNS/<name> --tune`;
  }

  async function start() {
    showError("");
    const res = await api("/api/train", { method: "POST", json: formBody() });
    if (res.status !== 202) { showError(`Training: ${plainError(res.status, res.body, "could not start")}`); return; }
    follow(res.body);
  }

  /* ---------- the job ---------- */

  async function resumeJob() {
    const res = await api("/api/jobs");
    if (res.status !== 200) return;
    const jobs = res.body.jobs.filter((j) => j.kind === "train");
    const live = jobs.find((j) => j.state === "running") || jobs.find((j) => j.state === "queued");
    if (live) follow(live);
  }

  function follow(job) {
    if (source) source.close();
    followed = job.id;
    render(job);
    source = new EventSource(`/api/jobs/${encodeURIComponent(job.id)}/events`);
    source.addEventListener("update", (e) => { const j = JSON.parse(e.data); if (j.id === followed) render(j); });
    source.addEventListener("end", async () => {
      source.close();
      source = null;
      await Promise.all([loadRuns(), refreshModels()]);
      const next = await api("/api/jobs");
      const queued = next.status === 200 && next.body.jobs.filter((j) => j.kind === "train" && ["running", "queued"].includes(j.state));
      if (queued && queued.length) follow(queued[queued.length - 1]);
    });
    source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) source = null; };
  }

  function render(job) {
    const p = job.progress || {};
    $("#train-job").hidden = false;
    $("#train-job").dataset.state = job.state;
    const from = job.params.start_from || SCRATCH;
    $("#train-job-title").textContent = from === SCRATCH ? `Training ${job.params.name} · ${job.params.arch} on ${job.params.dataset}`
      : `Fine-tuning ${from} on ${job.params.dataset} · ${job.params.name}`;
    updateCommand(job.command);
    const history = p.history || [];
    let status = job.state;
    if (job.state === "queued") status = `queued (${p.queue_position} ahead)`;
    else if (job.state === "running") {
      status = p.phase === "training" ? (from === SCRATCH ? `training: epoch ${Math.max(1, p.epoch || 0)} of ${p.epochs}`
        : `fine-tuning: epoch ${Math.max(1, p.epoch || 0)}`) :
        p.phase === "validating" ? "validating the run (scoring and tuning thresholds)…" :
        p.phase === "tuning" ? "scoring the parent and the fine-tuned model, tuning thresholds…" : `${p.phase || "starting"}…`;
      if (p.stop_requested && p.phase === "training") status = "stopping…";
    } else if (job.state === "failed") status = `failed: ${job.error}`;
    else if (job.result) status = job.result.run ? `${job.state}: run ${job.result.run} validated and added to the models` : `${job.state}: ${job.result.message}`;
    $("#train-status").textContent = status;
    if (job.state === "failed") showError(`Training ${job.params.name}: ${job.error}`);
    const byEpochs = p.epochs ? (history.length + (p.epoch_fraction || 0)) / p.epochs : 0;
    const fraction = job.state === "running" ? Math.min(1, Math.max(byEpochs, p.budget_fraction || 0)) :
      ["finished", "stopped"].includes(job.state) ? 1 : 0;
    $("#train-bar").style.width = `${Math.round(fraction * 100)}%`;
    $("#train-eta").textContent = job.state === "running" && p.phase === "training" && p.eta_s !== undefined
      ? `about ${seconds(p.eta_s)} left · ${seconds(job.elapsed_s)} so far` : job.elapsed_s ? `${seconds(job.elapsed_s)}` : "";
    $("#train-stop").hidden = !["running", "queued"].includes(job.state);
    $("#train-stop").textContent = job.state === "queued" ? "Cancel" : "Stop";
    drawLines($("#train-loss"), [{ label: "train loss", color: "#2563eb", points: history.map((r) => [r.epoch, r.train_loss]) }], { xlabel: "epoch" });
    drawLines($("#train-score"), [
      { label: "competition score", color: "#16a34a", points: history.map((r) => [r.epoch, r.val_score]) },
      { label: "AP@0.5", color: "#f59e0b", points: history.map((r) => [r.epoch, r.val_ap50]) },
    ], { xlabel: "epoch", ymin: 0, ymax: 1 });
    $("#train-score").dataset.epochs = String(history.length);
    showComparison(job.result && job.result.evaluation);
  }

  /** Parent versus fine-tuned model on the run's held-out images (or its training images, said so). */
  function showComparison(ev) {
    const box = $("#train-compare");
    box.hidden = !(ev && ev.parent && ev.native_tuned);
    if (box.hidden) return;
    const where = ev.val_on_train ? `its ${ev.n_images} training image(s) (too few to hold any out)` : `${ev.n_images} held-out image(s)`;
    box.textContent = `On ${where}: parent ${ev.parent.model} ${fmt(ev.parent.val_score, 3)}, fine-tuned ${fmt(ev.native_tuned.val_score, 3)} ` +
      "(competition score). The Performance screen compares them on any dataset (\"held-out images only\" for these).";
  }

  async function stop() {
    if (!followed) return;
    const res = await api(`/api/jobs/${encodeURIComponent(followed)}/stop`, { method: "POST" });
    if (res.status === 200) render(res.body);
  }

  /* ---------- trained models ---------- */

  async function loadRuns() {
    const res = await api("/api/runs");
    if (res.status !== 200) return;
    const body = $("#run-table tbody");
    body.replaceChildren(...res.body.runs.map((r) => {
      const tr = el("tr", { "data-run": r.name, "data-testid": "run-row", tabindex: "0" },
        el("td", {}, r.name), el("td", {}, r.arch || "–"), el("td", {}, r.dataset || "–"), el("td", {}, String(r.epochs_run ?? "–")),
        el("td", {}, fmt(r.val_score, 3)), el("td", {}, r.state));
      tr.addEventListener("click", () => showCard(r.name));
      return tr;
    }));
    if (!res.body.runs.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "none" }, "No trained models yet.")));
    fillStartFrom(res.body.runs);
  }

  async function showCard(name) {
    const res = await api(`/api/runs/${encodeURIComponent(name)}`);
    if (res.status !== 200) { showError(plainError(res.status, res.body, "no such run")); return; }
    $("#run-card").hidden = false;
    $("#run-card").textContent = res.body.model_card || `${name}: no model card yet`;
  }

  function init() {
    $("#dataset-upload").addEventListener("change", upload);
    $("#train-recipe").addEventListener("change", recipeChanged);
    $("#train-from").addEventListener("change", () => { $("#train-from").dataset.chosen = "1"; startFromChanged(); });
    for (const id of ["#train-dataset", "#train-arch", "#train-minutes", "#train-epochs"]) $(id).addEventListener("input", () => updateCommand());
    $("#train-start").addEventListener("click", start);
    $("#train-stop").addEventListener("click", stop);
  }

  document.addEventListener("DOMContentLoaded", init);
  return { show };
})();
