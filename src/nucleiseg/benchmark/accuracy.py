"""The accuracy suite: score a model on image kinds it was not tuned on.

Every row runs the command a user runs, ``nucleiseg segment SET -o PRED --model M`` (a separate
process, timed as a whole, so images/s includes process start), and scores it with
:func:`nucleiseg.api.evaluate_paths`, the function behind ``nucleiseg evaluate``. The classical
baseline is scored on the same sets. The lead figure is "unseen kinds": the mean of the zoom
rows' mean, the BBBC039 held-out row and the MoNuSeg row; the validation split (where thresholds
are tuned) is reported beside it, never folded into it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.io.layout import RUN_RECORD
from nucleiseg.api import evaluate_paths
from nucleiseg.benchmark.suite_sets import SuiteSet, kinds_of, prepare_sets

__all__ = ["format_markdown", "run_set", "run_suite", "suite_signature", "unseen_kinds"]

CLASSICAL = "classical"
_KEYS = ("score", "ap50", "f1_50", "n_true", "n_pred", "images_per_s")


def run_set(suite_set: SuiteSet, model: str, pred_dir: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """Segment one set with ``nucleiseg segment`` in a child process and score it.

    Parameters
    ----------
    suite_set : SuiteSet
        Inputs and ground truth.
    model : str
        ``--model`` value: bundled name, run folder or ``"classical"``.
    pred_dir : Path
        Output folder of the command (its ``*_masks.tif`` are scored).
    extra : list of str, optional
        More ``nucleiseg segment`` options (``--tta``, ``--backend onnx-int8``, ...).

    Returns
    -------
    dict
        ``score`` (competition, macro), ``ap50``, ``f1_50``, ``n_true``, ``n_pred``, ``images``,
        ``failed``, ``seconds`` (whole command), ``images_per_s``, the per-image scores and the
        command line.
    """
    command = [sys.executable, "-m", "nucleiseg.cli.main", "segment", str(suite_set.inputs), "-o", str(pred_dir),
               "--model", model, "--quiet", *(extra or [])]
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if proc.returncode not in (0, 1):  # 1 = some images failed (recorded), anything else = the command broke
        raise RuntimeError(f"{suite_set.name}: nucleiseg segment exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    failed = json.loads((pred_dir / RUN_RECORD).read_text())["failures"]
    report = evaluate_paths(suite_set.truth, pred_dir)
    s = report.summary
    return {
        "score": s["score_macro"], "ap50": s["ap50"], "f1_50": s["f1_50"], "n_true": s["n_true"], "n_pred": s["n_pred"],
        "images": s["n_images"], "failed": len(failed), "seconds": round(seconds, 2),
        "images_per_s": round(s["n_images"] / seconds, 3),
        "per_image": {str(r["id"]): round(float(r["score"]), 5) for r in report.per_image.to_dict(orient="records")},
        "command": "nucleiseg segment " + " ".join(command[4:]),
    }


def unseen_kinds(rows: dict[str, dict[str, Any]], sets: list[SuiteSet]) -> float:
    """Mean of (mean of the zoom rows, the BBBC039 row, the MoNuSeg row): the suite's lead figure."""
    groups: dict[str, list[float]] = {}
    for s in sets:
        if s.group != "validation":
            groups.setdefault(s.group, []).append(rows[s.name]["score"])
    return float(np.mean([np.mean(v) for v in groups.values()]))


def suite_signature(sets: list[SuiteSet]) -> list[list[Any]]:
    """What makes two suite runs comparable: each row's name, zoom and ids."""
    return [[s.name, s.zoom, list(s.ids)] for s in sets]


def _by_kind(per_image: dict[str, float], kinds: dict[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds.values())):
        scores = [per_image[i] for i, k in kinds.items() if k == kind and i in per_image]
        out[kind] = {"images": len(scores), "score": float(np.mean(scores)) if scores else float("nan")}
    return out


def _score_model(model: str, sets: list[SuiteSet], work: Path, extra: list[str], progress: bool) -> dict[str, dict[str, Any]]:
    rows = {}
    for s in sets:
        if progress:
            print(f"[suite] {model}: {s.name} ({len(s.ids)} images)", file=sys.stderr, flush=True)
        rows[s.name] = run_set(s, model, work / s.name, extra)
    return rows


def _baseline(sets: list[SuiteSet], work: Path, cached: Path | None, progress: bool) -> dict[str, dict[str, Any]]:
    """Classical rows: reused from ``cached`` (``accuracy_classical.json``) when it covers the same sets."""
    if cached is not None and cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("signature") == suite_signature(sets) and not data.get("options"):
            return data["rows"]
    return _score_model(CLASSICAL, sets, work / CLASSICAL, [], progress)


def run_suite(model: str, shared: Path, cache: Path, tta: bool = False, backend: str | None = None,
              baseline_file: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every row of the suite for ``model`` and the classical baseline.

    Parameters
    ----------
    model : str
        Bundled model name, run folder or ``"classical"``.
    shared : Path
        ``shared/data`` folder.
    cache : Path
        Working folder (links, zoomed copies, predictions).
    tta : bool
        Pass ``--tta`` to the segment command.
    backend : str, optional
        Pass ``--backend`` to the segment command.
    baseline_file : Path, optional
        An earlier ``accuracy_classical.json`` to take the baseline rows from when it covers
        the same sets.
    progress : bool
        Progress lines on stderr.

    Returns
    -------
    dict
        ``rows`` (per set: score, AP@0.5, F1@0.5, nuclei true/predicted, images/s, and for
        zoom rows the native score on the same images), ``baseline`` (classical rows),
        ``val_by_kind``, ``summary`` (``unseen_kinds`` and ``validation`` for model and
        baseline), ``sets``, ``signature``, ``options``, ``seconds``.
    """
    t = time.perf_counter()
    sets = prepare_sets(Path(shared), Path(cache), progress=progress)
    extra = (["--tta"] if tta else []) + (["--backend", backend] if backend else [])
    key = Path(model).name if Path(model).exists() else model
    work = Path(cache) / "predictions"
    rows = _score_model(model, sets, work / key, extra, progress)
    base = rows if model == CLASSICAL and not extra else _baseline(sets, work, baseline_file, progress)
    val = next(s for s in sets if s.group == "validation")
    for s in sets:
        if s.group == "zoom":
            native = [rows[val.name]["per_image"][i] for i in s.ids]
            rows[s.name]["native_same_images"] = float(np.mean(native))
            base_native = [base[val.name]["per_image"][i] for i in s.ids]
            base[s.name]["native_same_images"] = float(np.mean(base_native))
    kinds = kinds_of(val.inputs, val.ids)
    return {
        "model": model,
        "options": {k: v for k, v in (("tta", tta), ("backend", backend)) if v},
        "rows": rows,
        "baseline": base,
        "val_by_kind": {"model": _by_kind(rows[val.name]["per_image"], kinds),
                        "baseline": _by_kind(base[val.name]["per_image"], kinds)},
        "summary": {"unseen_kinds": unseen_kinds(rows, sets), "validation": rows[val.name]["score"],
                    "baseline_unseen_kinds": unseen_kinds(base, sets), "baseline_validation": base[val.name]["score"]},
        "sets": [s.to_json() for s in sets],
        "signature": suite_signature(sets),
        "seconds": round(time.perf_counter() - t, 1),
    }


def format_markdown(result: dict[str, Any], command: str = "") -> str:
    """The suite as a Markdown table (one row per set, the summary row first)."""
    rows, base, summ = result["rows"], result["baseline"], result["summary"]
    opts = ", ".join(f"{k}={v}" for k, v in result["options"].items()) or "defaults"
    lines = [
        f"Accuracy suite: `{result['model']}` ({opts}); competition score (mean over IoU 0.5..0.95, macro).",
        "",
        "| set | images | score | classical | AP@0.5 | F1@0.5 | nuclei true / predicted | images/s | native score, same images |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| **unseen kinds** (mean of zoom mean, BBBC039, MoNuSeg) | | **{summ['unseen_kinds']:.4f}** | "
        f"{summ['baseline_unseen_kinds']:.4f} | | | | | |",
    ]
    for s in result["sets"]:
        r, b = rows[s["name"]], base[s["name"]]
        native = f"{r['native_same_images']:.4f}" if "native_same_images" in r else ""
        lines.append(
            f"| {s['description']} | {r['images']} | {r['score']:.4f} | {b['score']:.4f} | {r['ap50']:.4f} | "
            f"{r['f1_50']:.4f} | {r['n_true']} / {r['n_pred']} | {r['images_per_s']:.2f} | {native} |"
        )
        if s["group"] == "validation":
            for kind, v in result["val_by_kind"]["model"].items():
                bv = result["val_by_kind"]["baseline"][kind]
                lines.append(f"| &nbsp;&nbsp;of which {kind} | {v['images']} | {v['score']:.4f} | {bv['score']:.4f} | | | | | |")
    lines += ["", "Thresholds and checkpoints are chosen on the DSB validation split only; the other sets are for "
              "measuring (MoNuSeg: non-commercial licence, never trained or tuned on)."]
    if command:
        lines += ["", f"Command: `{command}` ({result['seconds'] / 60:.1f} min on this machine)."]
    return "\n".join(lines) + "\n"
