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
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import ZOOMS, SizeModel, design, estimate_size
from nucleiseg.inference.size_calibration import estimate_summary
from nucleiseg.inference.size_fit import CHECK_ZOOMS, fit_mlp
from nucleiseg.inference.size_samples import (
    bbbc039_images, collect, dsb_images, probe_function, random_zooms, training_samples,
)
from nucleiseg.io.splits import bbbc039_heldout
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


def measure(seg: Segmenter, net: torch.nn.Module, shipped: bool) -> Callable[[np.ndarray], dict[str, object]]:
    """``collect``'s ``extra``: the pooled features (and the shipped estimate) of a normalised sample."""
    predict = probe_function(seg)

    def extra(norm: np.ndarray) -> dict[str, object]:
        out: dict[str, object] = {"features": pooled_features(net, norm)}
        if shipped:
            assert seg.size_model is not None
            out["shipped"] = estimate_size(norm, predict, seg.size_model).diameter
        return out

    return extra


def gather(seg: Segmenter, net: torch.nn.Module, samples: Iterator[tuple[str, np.ndarray, np.ndarray]],
           zooms_for: Callable[[str], Sequence[float]], side: int, rng: np.random.Generator | None, shipped: bool) -> dict[str, np.ndarray]:
    """Probe statistics, truth, features (and the shipped estimate) of every zoomed crop (:func:`collect`)."""
    data = collect(seg, samples, zooms_for, rng, max_side=side, log=False, extra=measure(seg, net, shipped))
    return {k: np.asarray(v) for k, v in data.items() if k not in ("ids", "zoom")}


def _design(stats: np.ndarray, zoom1_only: bool) -> np.ndarray:
    """Design rows of the shipped regression; ``zoom1_only`` as if the coarse views were never computed."""
    return np.stack([design(np.where(np.arange(len(st))[:, None] == 0, st, 0.0) if zoom1_only else st, ZOOMS, 18.0)
                     for st in stats])


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
    train = gather(seg, net, chain(dsb_images(dsb_train), bbbc039_images(bbbc_train)),
                   lambda key: random_zooms(rng, 2 if key.startswith("dsb") else 4), args.side, rng, False)
    val_ids = json.loads((folder / "split.json").read_text())["val"]
    tests = {
        "dsb_val": gather(seg, net, dsb_images(val_ids), lambda key: CHECK_ZOOMS, args.side, None, True),
        "bbbc039_heldout": gather(seg, net, bbbc039_images(bbbc039_heldout()), lambda key: CHECK_ZOOMS, args.side, None, True),
    }
    print(f"{len(train['true'])} training samples, probed in {time.time() - t0:.0f} s", file=sys.stderr)

    def inputs(d: dict[str, np.ndarray], name: str) -> np.ndarray:
        parts = {"a": [d["features"]], "z1": [_design(d["stats"], True)], "c": [_design(d["stats"], False)]}
        return np.hstack([p for key in name.split("+") for p in parts[key]])

    def scores(model: SizeModel, name: str) -> dict[str, dict[str, float | int]]:
        return {k: estimate_summary(np.exp(model.predict_log(inputs(t, name))), t["true"]) for k, t in tests.items()}

    results: dict[str, object] = {
        "command": "python benchmarks/size_candidate_a.py" + (f" --side {args.side}" if args.side != 384 else ""),
        "side": args.side, "training_samples": int(train["true"].size),
        "shipped": {k: estimate_summary(t["shipped"], t["true"]) for k, t in tests.items()},
    }
    log_true = np.log(train["true"])
    fits = {}
    for name in ("a", "z1", "a+z1", "c", "a+c"):
        for hidden in (16, 32):
            for seed in (14, 15):
                fits[f"{name} mlp{hidden} seed{seed}"] = scores(fit_mlp(inputs(train, name), log_true, hidden=hidden, seed=seed), name)
    for alpha in (1.0, 10.0):
        fits[f"a ridge{alpha:g}"] = scores(SizeModel.fit(inputs(train, "a"), log_true, alpha=alpha), "a")
    results["fits"] = fits
    results["seconds"] = round(time.time() - t0)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for name, res in [("shipped", results["shipped"]), *fits.items()]:
        print(f"{name:22s} " + "  ".join(f"{k} {v['within_30pct']:.3f}/{v['median_abs_log']:.3f}" for k, v in res.items()))  # type: ignore[union-attr]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
