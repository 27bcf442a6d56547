/* Performance screen: score one or two models over a dataset; per-image table and difference views. */
"use strict";

const Performance = (() => {
  const COLORS = ["#2563eb", "#db2777"];
  let source = null;
  let current = null;

  async function show() {
    const res = await api("/api/datasets");
    if (res.status === 200) fillDatasetPickers(res.body);
    await refreshModels();
  }

  async function run() {
    showError("");
    const models = [$("#perf-model-a").value, $("#perf-model-b").value].filter(Boolean);
    const body = { dataset: $("#perf-dataset").value, models, tta: $("#perf-tta").checked, held_out: $("#perf-heldout").checked };
    const res = await api("/api/evaluate-dataset", { method: "POST", json: body });
    if (res.status !== 202) { showError(`Performance: ${plainError(res.status, res.body, "could not start")}`); return; }
    $("#perf-result").replaceChildren();
    follow(res.body);
  }

  function follow(job) {
    if (source) source.close();
    current = job.id;
    progress(job);
    source = new EventSource(`/api/jobs/${encodeURIComponent(job.id)}/events`);
    source.addEventListener("update", (e) => progress(JSON.parse(e.data)));
    source.addEventListener("end", async () => {
      source.close();
      source = null;
      const res = await api(`/api/jobs/${encodeURIComponent(job.id)}`);
      if (res.status === 200) finish(res.body);
    });
  }

  function progress(job) {
    const p = job.progress || {};
    $("#perf-command").textContent = job.command;
    const live = ["queued", "running"].includes(job.state);
    $("#perf-progress").hidden = !live;
    $("#perf-cancel").hidden = !live;
    $("#perf-run").disabled = live;
    if (!live) return;
    const fraction = p.total ? p.done / p.total : 0;
    $("#perf-bar").style.width = `${Math.round(fraction * 100)}%`;
    $("#perf-progress-text").textContent = job.state === "queued" ? "Waiting for the evaluation before it…" :
      p.phase === "scoring" ? "Scoring…" :
      evaluationProgressText(p);
  }

  function finish(job) {
    progress(job);
    if (job.state === "failed") { showError(`Performance: ${job.error}`); return; }
    if (!job.result) {
      $("#perf-result").replaceChildren(el("p", { class: "hint", "data-testid": "perf-cancelled" }, `Evaluation ${job.state}.`));
      return;
    }
    render(job);
  }

  function render(job) {
    const { models, images } = job.result;
    const metric = (name, value, testid) => el("div", { class: "metric" }, el("b", { "data-testid": testid }, fmt(value, 3)), el("span", {}, name));
    const blocks = models.map((m, i) => el("div", { class: "model-metrics" },
      el("h3", {}, el("i", { class: `sw model-${i}` }), m.name),
      el("div", { class: "metrics" },
        metric("Competition score", m.summary.score_macro, `perf-score-${i}`), metric("AP @ IoU 0.5", m.summary.ap50, `perf-ap50-${i}`),
        metric("F1 @ 0.5", m.summary.f1_50, `perf-f1-${i}`), metric("Panoptic quality", m.summary.pq, `perf-pq-${i}`)),
      el("p", { class: "counts" }, `${m.summary.n_images} images · ${m.summary.n_true} true nuclei, ${m.summary.n_pred} predicted · ` +
        `at IoU 0.5: ${m.summary.tp50} matched, ${m.summary.fp50} extra, ${m.summary.fn50} missed`)));
    const curve = el("canvas", { class: "chart", height: "220", "data-testid": "perf-curve" });
    const csv = el("a", { class: "button", href: `/api/jobs/${encodeURIComponent(job.id)}/table.csv`, download: "", "data-testid": "perf-csv" }, "Export table (CSV)");
    const detail = el("div", { class: "perf-detail", "data-testid": "perf-detail", hidden: "" });
    const table = el("table", { class: "measurements", "data-testid": "perf-table" }, el("thead"), el("tbody"));
    const card = el("article", { class: "card result done" },
      el("header", { class: "result-head" }, el("div", {}, el("h2", { class: "result-name" }, `${job.params.dataset}: ${models.map((m) => m.name).join(" vs ")}`),
        el("p", { class: "result-meta" }, `${images.length} images · ${seconds(job.elapsed_s)}${job.params.tta ? " · TTA" : ""}`)), csv),
      ...blocks,
      el("div", { class: "perf-body" },
        el("figure", {}, el("figcaption", {}, "Score per IoU threshold"), curve),
        el("div", { class: "table-box" }, el("h3", {}, "Per image ", el("small", {}, "(worst first; click a column to sort, a row to compare)")),
          el("div", { class: "table-scroll tall" }, table))),
      detail);
    $("#perf-result").replaceChildren(card);
    drawLines(curve, models.map((m, i) => ({ label: m.name, color: COLORS[i], points: m.per_threshold.map((p) => [p.threshold, p.score]) })),
      { xlabel: "IoU threshold", ymin: 0, ymax: 1 });
    fillTable(job, table, detail);
  }

  function fillTable(job, table, detail) {
    const { models, images } = job.result;
    const columns = [["thumb", "", null], ["id", "Image", null]];
    models.forEach((m, i) => {
      const tag = models.length > 1 ? ` ${i ? "B" : "A"}` : "";
      columns.push([`score:${i}`, `Score${tag}`, i], [`ap50:${i}`, `AP50${tag}`, i], [`f1_50:${i}`, `F1${tag}`, i],
        [`n_pred:${i}`, `Found${tag}`, i]);
    });
    columns.splice(2, 0, ["n_true:0", "True", 0]);
    const value = (row, key) => {
      if (key === "id") return row.id;
      const [name, i] = key.split(":");
      return row.models[Number(i)] ? row.models[Number(i)][name] : null;
    };
    let sortKey = "score:0";
    let ascending = true;
    const head = el("tr");
    for (const [key, title] of columns) {
      const th = el("th", { "data-key": key, "data-testid": `perf-sort-${key.replace(":", "-")}` }, title);
      if (key !== "thumb") th.addEventListener("click", () => { ascending = sortKey === key ? !ascending : true; sortKey = key; fill(); });
      head.append(th);
    }
    $("thead", table).replaceChildren(head);
    const fill = () => {
      const sorted = [...images].sort((a, b) => {
        const va = value(a, sortKey); const vb = value(b, sortKey);
        const c = typeof va === "string" ? va.localeCompare(vb) : (va ?? -Infinity) - (vb ?? -Infinity);
        return ascending ? c : -c;
      });
      for (const th of head.children) th.setAttribute("aria-sort", th.dataset.key === sortKey ? (ascending ? "ascending" : "descending") : "none");
      $("tbody", table).replaceChildren(...sorted.map((row) => {
        const tr = el("tr", { "data-testid": "perf-row", "data-index": String(row.index), tabindex: "0" });
        for (const [key] of columns) {
          if (key === "thumb") {
            tr.append(el("td", {}, el("img", { class: "thumb", src: `/api/jobs/${encodeURIComponent(job.id)}/images/${row.index}/thumb.png`, alt: "", loading: "lazy" })));
          } else {
            const v = value(row, key);
            tr.append(el("td", { class: key === "id" ? "left" : "" }, typeof v === "string" ? v : fmt(v, key.startsWith("n_") ? 0 : 3)));
          }
        }
        const open = () => showDetail(job, row, detail, tr);
        tr.addEventListener("click", open);
        tr.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
        return tr;
      }));
    };
    fill();
  }

  function showDetail(job, row, detail, tr) {
    for (const other of tr.parentElement.children) other.classList.toggle("selected", other === tr);
    const figures = job.result.models.map((m, i) => {
      const rec = row.models[i] || {};
      const img = el("img", { class: "diff-img", alt: `difference view of ${row.id} for ${m.name}`, "data-testid": `perf-diff-${i}`,
        src: `/api/jobs/${encodeURIComponent(job.id)}/images/${row.index}/diff.png?model=${i}` });
      return el("figure", { class: "diff" }, el("figcaption", {}, `${m.name} · score ${fmt(rec.score, 3)} · ${rec.tp50 ?? "–"} matched, ${rec.fp50 ?? "–"} extra, ${rec.fn50 ?? "–"} missed`),
        el("div", { class: "diff-scroll" }, img));
    });
    const legend = el("ul", { class: "legend" },
      el("li", {}, el("i", { class: "sw blue" }), "predicted only (extra)"), el("li", {}, el("i", { class: "sw red" }), "ground truth only (missed)"),
      el("li", {}, el("i", { class: "sw green" }), "both"), el("li", {}, el("i", { class: "sw yellow" }), "predicted outlines"));
    detail.replaceChildren(el("h3", {}, `${row.id}: difference view`), el("div", { class: `side-by-side n${figures.length}` }, ...figures), legend);
    detail.hidden = false;
    detail.scrollIntoView({ block: "nearest" });
  }

  async function cancel() {
    if (current) await api(`/api/jobs/${encodeURIComponent(current)}/stop`, { method: "POST" });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#perf-run").addEventListener("click", run);
    $("#perf-cancel").addEventListener("click", cancel);
  });
  return { show };
})();
