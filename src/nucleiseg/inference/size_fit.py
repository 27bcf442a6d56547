"""Fit a model folder's nucleus size estimator (``size_model.json``, see :mod:`nucleiseg.inference.size`).

Training data: the DSB training split of the model (``split.json`` key ``"train"``, never the
validation images) and the BBBC039 images not on the held-out list (with ``--tissue-zooms``
also the DSB fluorescence training images rendered as synthetic H&E tissue by
:mod:`nucleiseg.transforms.tissue`), each zoomed at random in
log-space over ``x0.25 .. x7`` (image by :func:`~nucleiseg.inference.scale.rescale_image`, ground truth by
:func:`~nucleiseg.inference.scale.resize_labels`, cropped first so the zoomed image has at most ``--max-side`` pixels a
side). The target is ``log(estimate_diameter(zoomed ground truth))``; the inputs are the probe
statistics of the zoomed image. Reproducible::

    python -m nucleiseg.inference.size_fit --model default

(fixed seed; a few CPU minutes). ``--zooms`` sets the probe's zooms (default
:data:`~nucleiseg.inference.size.ZOOMS`; ``benchmarks/size_zooms.py`` compares sets).
``--also-probe RUN ...`` lets other networks probe the same training samples too, and the
regression is fitted on all their statistics: it then carries over better to a network it was
not fitted on (docs/size_estimation.md, "Which zooms"). ``--cache`` keeps the probe statistics
so refits are instant.
The gate that lets ordinary images skip the coarse views (:meth:`SizeModel.gate_diameter`) is
then chosen on the model's DSB validation images zoomed x1/3 .. x6, as post-processing thresholds
are chosen on the validation split (:func:`choose_gate`; ``--no-gate`` leaves it off;
``--gate-only`` keeps the folder's fitted regression and chooses only its gate). Before the
gate, the regression's log offset is calibrated out of fold on the training samples
(:func:`nucleiseg.inference.size_calibration.calibrate_offset`; ``--no-calibrate`` leaves it at 0,
``--calibrate-only`` keeps the folder's regression and sets only the offset, then the gate).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import SIZE_MODEL_FILE, SizeModel, design
from nucleiseg.inference.size_calibration import calibrate_offset, choose_gate, estimate_summary
from nucleiseg.inference.size_probe import SHRINK, VIEW, WHOLE_PIXELS, ZOOMS
from nucleiseg.inference.size_samples import (
    MAX_SIDE, ZOOM_RANGE, bbbc039_images, collect, dsb_images, random_zooms, tissue_images, training_samples,
)

#: Zooms of the validation check (``benchmarks/size_estimation.py``) and of the gate's choice.
CHECK_ZOOMS = (1 / 3, 0.5, 1.0, 2.0, 4.0, 6.0)
SEED = 14


def parse_zooms(text: str) -> tuple[float, ...]:
    """``"1,1/4,1/8"`` -> ``(1.0, 0.25, 0.125)``: comma-separated decimals or fractions, zoom 1 first, then decreasing."""
    try:
        zooms = tuple(float(Fraction(part.strip())) for part in text.split(","))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"zooms must be numbers like 1,1/4,1/8, got {text!r}") from exc
    if zooms[0] != 1.0 or any(not 0 < b < a for a, b in zip(zooms, zooms[1:], strict=False)):
        raise argparse.ArgumentTypeError(f"zooms must start with 1 and decrease, all above 0, got {text!r}")
    return zooms


def training_probes(
    segmenter: Segmenter, model_dir: Path, zooms: Sequence[float] = ZOOMS, seed: int = SEED, dsb_zooms: int = 1,
    bbbc_zooms: int = 3, tissue_zooms: int = 0, max_side: int = MAX_SIDE, shrink: str = SHRINK,
) -> dict[str, list]:
    """Probe statistics at ``zooms`` of the randomly zoomed training samples (:func:`training_samples`).

    Each DSB training image gets ``dsb_zooms`` random zooms, each BBBC039 one ``bbbc_zooms``
    (and with ``tissue_zooms`` the DSB images rendered as synthetic H&E), drawn from ``seed``: the
    samples depend only on the seed, so every network probes the same images, zooms and crops.
    """
    dsb, bbbc = training_samples(model_dir)
    print(f"probing {len(dsb)} DSB + {len(bbbc)} BBBC039 training images with {segmenter.name}", file=sys.stderr)
    rng = np.random.default_rng(seed)

    def zooms_for(key: str) -> list[float]:
        k = {"dsb": dsb_zooms, "tissue": tissue_zooms}.get(key.split("/")[0], bbbc_zooms)
        return random_zooms(rng, k)

    parts = [collect(segmenter, dsb_images(dsb), zooms_for, rng, zooms, max_side, shrink=shrink),
             collect(segmenter, bbbc039_images(bbbc), zooms_for, rng, zooms, max_side, shrink=shrink)]
    if tissue_zooms > 0:
        parts.append(collect(segmenter, tissue_images(dsb, rng), zooms_for, rng, zooms, max_side, shrink=shrink))
    return {k: [v for part in parts for v in part[k]] for k in parts[0]}


def validation_samples(
    segmenter: Segmenter, model_dir: Path, max_side: int = MAX_SIDE, zooms: Sequence[float] = ZOOMS, shrink: str = SHRINK,
) -> dict[str, list]:
    """Probe statistics of the model's DSB validation images at :data:`CHECK_ZOOMS` (central crops).

    The protocol of ``benchmarks/size_estimation.py``; the gate is chosen on these, as the
    post-processing thresholds are chosen on the validation split.
    """
    val = json.loads((model_dir / "split.json").read_text())["val"]
    return collect(segmenter, dsb_images(val), lambda key: CHECK_ZOOMS, None, zooms=zooms, max_side=max_side, shrink=shrink)


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 32, weight_decay: float = 1e-2, epochs: int = 2000, seed: int = SEED) -> SizeModel:
    """A one-hidden-layer tanh network on standardised ``x``, fitted full-batch (Adam, smooth L1).

    Deterministic for a given seed (CPU, float32). Returns the weights as a :class:`SizeModel`.
    """
    import torch

    torch.manual_seed(seed)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    xt = torch.tensor((x - mean) / scale, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    with torch.no_grad():
        net[2].bias.fill_(float(yt.mean()))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.smooth_l1_loss(net(xt)[:, 0], yt, beta=0.1)
        loss.backward()
        opt.step()
    w1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    w2, b2 = net[2].weight.detach().double().numpy()[0], float(net[2].bias.detach()[0])
    return SizeModel(mean.tolist(), scale.tolist(), w2.tolist(), b2, hidden_weight=w1.T.tolist(), hidden_bias=b1.tolist())


def _errors(model: SizeModel, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    found = estimate_summary(np.exp(model.predict_log(x)), np.exp(y))
    return {"median_abs_log_error": found["median_abs_log"], "within_30pct": found["within_30pct"]}


def _without_paths(argv: list[str]) -> list[str]:
    """The arguments that change the fit (``--cache`` and ``--out`` only say where files are)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--cache", "--out"):
            skip = True
        elif not arg.startswith(("--cache=", "--out=")):
            out.append(arg)
    return out


def _command(argv: Sequence[str] | None) -> str:
    """The command line as recorded in ``meta`` (without the paths of ``--cache`` and ``--out``)."""
    return "python -m nucleiseg.inference.size_fit " + " ".join(_without_paths(list(argv if argv is not None else sys.argv[1:])))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: collect (or load cached) statistics, fit, write ``size_model.json``."""
    ap = argparse.ArgumentParser(prog="python -m nucleiseg.inference.size_fit", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="bundled model name or run folder (needs split.json)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--dsb-zooms", type=int, default=1, help="random zooms per DSB training image")
    ap.add_argument("--bbbc-zooms", type=int, default=3, help="random zooms per BBBC039 training image")
    ap.add_argument("--tissue-zooms", type=int, default=0, help="random zooms per DSB fluorescence training image rendered as synthetic H&E")
    ap.add_argument("--kind", choices=["mlp", "ridge"], default="mlp", help="regression (ridge: linear, closed form)")
    ap.add_argument("--alpha", type=float, default=1.0, help="ridge penalty (standardised inputs)")
    ap.add_argument("--hidden", type=int, default=32, help="hidden units of the mlp")
    ap.add_argument("--max-side", type=int, default=MAX_SIDE)
    ap.add_argument("--zooms", type=parse_zooms, default=ZOOMS,
                    help="zooms the probe looks at, zoom 1 first, e.g. 1,1/4,1/8 (default: %(default)s; "
                         "ignored with --gate-only and --calibrate-only, which keep the folder's)")
    ap.add_argument("--also-probe", nargs="+", default=[], metavar="MODEL",
                    help="other networks (run folders or bundled names) that probe the same training samples too: "
                         "the regression is fitted on every network's statistics, which makes it carry over "
                         "better to a network it was not fitted on (the gate is still chosen on --model's)")
    ap.add_argument("--no-gate", action="store_true", help="always probe every zoom (no early stop after the zoom-1 view)")
    ap.add_argument("--gate-only", action="store_true", help="keep the folder's fitted size_model.json and choose only its gate")
    ap.add_argument("--no-calibrate", action="store_true", help="leave the log offset at 0 (no out-of-fold calibration)")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="keep the folder's fitted regression and choose only its log offset (then its gate)")
    ap.add_argument("--cache", type=Path, default=None, help="npz of probe statistics (read if present, else written)")
    ap.add_argument("--out", type=Path, default=None, help=f"output file (default <model>/{SIZE_MODEL_FILE})")
    args = ap.parse_args(argv)

    folder = ModelBundle.open(args.model).folder
    assert folder is not None, f"{args.model}: a model folder is needed"
    segmenter = Segmenter.from_pretrained(folder)
    cached = dict(np.load(args.cache, allow_pickle=False)) if args.cache is not None and args.cache.is_file() else {}
    out = args.out or folder / SIZE_MODEL_FILE
    if args.gate_only or args.calibrate_only:
        model = SizeModel.load(folder / SIZE_MODEL_FILE)
    else:
        model = _fit(args, _training_data(args, folder, segmenter, cached, args.zooms, SHRINK), segmenter.config.infer.target_diameter, argv)
    if args.calibrate_only or not (args.gate_only or args.no_calibrate):
        _calibrate(args, model, _training_data(args, folder, segmenter, cached, model.zooms, model.shrink), argv)
    if not args.no_gate:
        _check_cache(cached, "val_stats", model.zooms, model.shrink)
        if "val_stats" not in cached:
            print("probing the validation images for the gate", file=sys.stderr)
            val = validation_samples(segmenter, folder, args.max_side, model.zooms, model.shrink)
            cached.update(val_stats=np.stack(val["stats"]), val_true=np.array(val["true"]), shrink=np.array(model.shrink))
        tolerance = segmenter.config.infer.rescale_tolerance  # a gated image is segmented at native scale
        model.meta["gate"] = choose_gate(model, cached["val_stats"], np.log(cached["val_true"]), max_band=tolerance)
        model.meta["gate"]["data"] = f"DSB validation split ({len(cached['val_true'])} samples: zooms x1/3, x0.5, x1, x2, x4, x6)"
        model.meta["gate"]["command"] = _command(argv)
    if args.cache is not None and cached:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **cached)
    model.save(out)
    print(f"wrote {out}: {model.meta}")
    return 0


def _training_data(
    args: argparse.Namespace, folder: Path, segmenter: Segmenter, cached: dict[str, np.ndarray], zooms: Sequence[float],
    shrink: str,
) -> dict[str, list]:
    """Probe statistics at ``zooms`` of the randomly zoomed training images (read from, and added to, ``cached``)."""
    _check_cache(cached, "stats", zooms, shrink)
    if "stats" in cached:
        return {"ids": list(cached["ids"]), "zoom": list(cached["zoom"]), "true": list(cached["true"]), "stats": list(cached["stats"])}
    data: dict[str, list] = {"ids": [], "zoom": [], "true": [], "stats": []}
    for seg in [segmenter, *(Segmenter.from_pretrained(m) for m in args.also_probe)]:
        part = training_probes(seg, folder, zooms, args.seed, args.dsb_zooms, args.bbbc_zooms, args.tissue_zooms, args.max_side, shrink)
        data = {k: data[k] + part[k] for k in data}
    cached.update(ids=np.array(data["ids"]), zoom=np.array(data["zoom"]), true=np.array(data["true"]), stats=np.stack(data["stats"]),
                  shrink=np.array(shrink))
    return data


def _check_cache(cached: dict[str, np.ndarray], key: str, zooms: Sequence[float], shrink: str) -> None:
    """Stop with a clear message when cached probe statistics were taken at a different number of zooms
    or with another way of shrinking the views (files without ``shrink`` were taken with ``"bilinear"``)."""
    if key in cached and cached[key].shape[1] != len(zooms):
        raise SystemExit(f"error: the --cache file holds {key} of {cached[key].shape[1]} zooms, this fit probes "
                         f"{len(zooms)}; use another cache file")
    taken = str(cached.get("shrink", "bilinear"))
    if key in cached and taken != shrink:
        raise SystemExit(f"error: the --cache file holds {key} of views shrunk {taken}, this fit shrinks them {shrink}; "
                         "use another cache file")


def _samples(data: dict[str, list], zooms: Sequence[float], target: float) -> tuple[np.ndarray, np.ndarray]:
    """Design rows and true log diameters of the collected samples."""
    x = np.stack([design(np.asarray(s), zooms, target) for s in data["stats"]])
    return x, np.log(np.asarray(data["true"]))


def _regression(args: argparse.Namespace) -> Callable[[np.ndarray, np.ndarray], SizeModel]:
    """``(x, y) -> SizeModel``: the regression the arguments ask for (ridge or MLP)."""
    if args.kind == "ridge":
        return lambda x, y: SizeModel.fit(x, y, args.alpha)
    return lambda x, y: fit_mlp(x, y, args.hidden, seed=args.seed)


def _fit(args: argparse.Namespace, data: dict[str, list], target: float, argv: Sequence[str] | None) -> SizeModel:
    """The regression fitted on the training samples, with its settings and provenance."""
    x, y = _samples(data, args.zooms, target)
    model = _regression(args)(x, y)
    model.zooms, model.target, model.view, model.whole_pixels, model.shrink = list(args.zooms), target, VIEW, WHOLE_PIXELS, SHRINK
    model.meta = {
        "command": _command(argv),
        "kind": args.kind, "seed": args.seed, "samples": len(y),
        "data": f"DSB split.json train ids x{args.dsb_zooms} + BBBC039 training ids x{args.bbbc_zooms}"
                f" + DSB fluorescence training ids rendered as synthetic H&E x{args.tissue_zooms}, "
                f"random zoom x{ZOOM_RANGE[0]}..x{ZOOM_RANGE[1]} (log-uniform), zoomed sides <= {args.max_side}"
                + (f"; probed by the model and by {', '.join(args.also_probe)}" if args.also_probe else ""),
        "train": _errors(model, x, y),
    }
    return model


def _calibrate(args: argparse.Namespace, model: SizeModel, data: dict[str, list], argv: Sequence[str] | None) -> None:
    """Set ``model.log_offset`` from out-of-fold errors on the training samples (:func:`calibrate_offset`)."""
    x, y = _samples(data, model.zooms, model.target)
    print(f"calibrating the log offset out of fold on {len(y)} training samples", file=sys.stderr)
    found = calibrate_offset(x, y, data["ids"], _regression(args), seed=args.seed)
    model.log_offset = float(found["log_offset"])
    model.meta["calibration"] = {**found, "data": "the training samples above, folds grouped by image", "command": _command(argv)}


if __name__ == "__main__":
    raise SystemExit(main())
