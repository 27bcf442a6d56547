"""Issue 14's candidate (a), measured: size regression from the network's pooled bottleneck features.

Cellpose estimates the nucleus size from the "style" of its network: the bottleneck features of
one pass, pooled over the image, regressed onto log(diameter). For nucleiseg that pass would be
the zoom-1 pass that small images need anyway, so the estimate would cost nothing extra. This
script measures whether it is accurate enough, against the shipped probe (candidate c: four
views at zoom 1, 1/2, 1/4, 1/8 and an MLP on their statistics), on the *same* samples:

* samples: the default model's DSB training images (2 random zooms each, log-uniform x0.25-x7)
  and the BBBC039 training part (4 zooms), randomly cropped so zoomed sides are at most
  ``--side`` pixels (default 384: an image the zoom-1 pass takes whole); measured on the 67 DSB
  validation images and the 40 held-out BBBC039 images at x1/3, x0.5, x1, x2, x4, x6 (central
  crops of the same side). Truth: the median diameter of the zoomed crop's ground truth.
* features per sample: the mean and standard deviation over the image of each channel of the
  two deepest encoder levels of the PyTorch model (64 + 128 channels: 384 numbers), and the
  probe statistics of the shipped estimator (:func:`nucleiseg.inference.size.probe_stats`).
* regressions, all fitted on the training samples with
  :func:`nucleiseg.inference.size_fit.fit_mlp` (16 and 32 tanh units, seeds 14 and 15) or a
  ridge: ``a`` features alone; ``z1`` the zoom-1 view's statistics alone (free for small
  images, as ``a``); ``a+z1``; ``c`` the four views (the shipped design, refitted on these
  samples); ``a+c``; and ``shipped``, the bundled ``size_model.json`` as it is.

Reported: the share of samples within +-30 % of the truth and the median |log(estimate/true)|::

    python benchmarks/size_candidate_a.py           # ~12 CPU minutes; results/size_candidate_a.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import ZOOMS, design, estimate_size, probe_stats
from nucleiseg.inference.size_fit import (
    CHECK_ZOOMS, bbbc039_images, dsb_images, fit_mlp, probe_function, random_zooms, training_samples, zoomed,
)
from nucleiseg.io.splits import bbbc039_heldout
from nucleiseg.postprocess.watershed import estimate_diameter
from nucleiseg.training.checkpoint import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def pooled_features(net: torch.nn.Module, norm: np.ndarray, levels: int = 2) -> np.ndarray:
    """Mean and standard deviation per channel of the ``levels`` deepest encoder outputs."""
    x = torch.from_numpy(np.ascontiguousarray(norm.transpose(2, 0, 1)))[None]
    stride = int(getattr(net, "stride", 8))
    ph, pw = (-x.shape[2]) % stride, (-x.shape[3]) % stride
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    with torch.inference_mode():
        skips = net.encoder(x)
    out = []
    for level in skips[-levels:]:
        flat = level[0].flatten(1)
        out += [flat.mean(1), flat.std(1)]
    return torch.cat(out).double().numpy()


def collect(seg: Segmenter, net: torch.nn.Module, samples: Iterator[tuple[str, np.ndarray, np.ndarray]],
            zooms_for: Callable[[str], list[float]], side: int, rng: np.random.Generator | None, shipped: bool) -> dict[str, np.ndarray]:
    """Features, probe statistics, truth (and the shipped estimate) of every zoomed crop."""
    predict = probe_function(seg)
    rows: dict[str, list] = {"features": [], "stats": [], "log_true": [], "log_shipped": []}
    for _key, image, labels in samples:
        for zoom in zooms_for(_key):
            img, lab = zoomed(image, labels, zoom, side, rng)
            true = estimate_diameter(lab)
            if not math.isfinite(true):
                continue
            norm = seg.normalize(img)
            rows["features"].append(pooled_features(net, norm))
            rows["stats"].append(probe_stats(norm, predict)[0])
            rows["log_true"].append(math.log(true))
            if shipped:
                assert seg.size_model is not None
                rows["log_shipped"].append(math.log(estimate_size(norm, predict, seg.size_model).diameter))
    return {k: np.asarray(v) for k, v in rows.items()}


def _design(stats: np.ndarray, zoom1_only: bool) -> np.ndarray:
    rows = []
    for st in stats:
        st = st.copy()
        if zoom1_only:
            st[1:] = 0.0  # as if the coarse views were never computed
        rows.append(design(st, ZOOMS, 18.0))
    return np.asarray(rows)


def score(log_pred: np.ndarray, log_true: np.ndarray) -> dict[str, float]:
    """Share within +-30 % and median |log error|."""
    ratio = np.exp(log_pred - log_true)
    return {"within_30pct": round(float(np.mean((ratio >= 0.7) & (ratio <= 1.3))), 3),
            "median_abs_log": round(float(np.median(np.abs(log_pred - log_true))), 3), "n": int(log_true.size)}


def main(argv: list[str] | None = None) -> int:
    """Collect, fit, score and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--out", type=Path, default=RESULTS / "size_candidate_a.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bundle = ModelBundle.open("default")
    folder = Path(bundle.folder)
    net = load_model(bundle.config.model, bundle.weights_file()).eval()
    seg = Segmenter.from_pretrained("default", threads=1)
    t0 = time.time()
    dsb_train, bbbc_train = training_samples(folder)
    rng = np.random.default_rng(14)
    train = collect(seg, net, chain(dsb_images(dsb_train), bbbc039_images(bbbc_train)),
                    lambda key: random_zooms(rng, 2 if key.startswith("dsb") else 4), args.side, rng, False)
    val_ids = json.loads((folder / "split.json").read_text())["val"]
    tests = {
        "dsb_val": collect(seg, net, dsb_images(val_ids), lambda key: list(CHECK_ZOOMS), args.side, None, True),
        "bbbc039_heldout": collect(seg, net, bbbc039_images(bbbc039_heldout()), lambda key: list(CHECK_ZOOMS), args.side, None, True),
    }
    print(f"{len(train['log_true'])} training samples, probed in {time.time() - t0:.0f} s", file=sys.stderr)

    def inputs(d: dict[str, np.ndarray], name: str) -> np.ndarray:
        parts = {"a": [d["features"]], "z1": [_design(d["stats"], True)], "c": [_design(d["stats"], False)]}
        return np.hstack([p for key in name.split("+") for p in parts[key]])

    results: dict[str, object] = {
        "command": "python benchmarks/size_candidate_a.py" + (f" --side {args.side}" if args.side != 384 else ""),
        "side": args.side, "training_samples": int(train["log_true"].size),
        "shipped": {k: score(t["log_shipped"], t["log_true"]) for k, t in tests.items()},
    }
    fits = {}
    for name in ("a", "z1", "a+z1", "c", "a+c"):
        for hidden in (16, 32):
            for seed in (14, 15):
                model = fit_mlp(inputs(train, name), train["log_true"], hidden=hidden, seed=seed)
                fits[f"{name} mlp{hidden} seed{seed}"] = {k: score(model.predict_log(inputs(t, name)), t["log_true"]) for k, t in tests.items()}
    x = train["features"]
    mean, scale = x.mean(0), x.std(0) + 1e-9
    for alpha in (1.0, 10.0):
        z = (x - mean) / scale
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (train["log_true"] - train["log_true"].mean()))
        fits[f"a ridge{alpha:g}"] = {k: score(((t["features"] - mean) / scale) @ coef + train["log_true"].mean(), t["log_true"])
                                     for k, t in tests.items()}
    results["fits"] = fits
    results["seconds"] = round(time.time() - t0)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for name, res in [("shipped", results["shipped"]), *fits.items()]:
        print(f"{name:22s} " + "  ".join(f"{k} {v['within_30pct']:.3f}/{v['median_abs_log']:.3f}" for k, v in res.items()))  # type: ignore[union-attr]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
