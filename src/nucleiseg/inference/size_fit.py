"""Fit a model folder's nucleus size estimator (``size_model.json``, see :mod:`nucleiseg.inference.size`).

Training data: the DSB training split of the model (``split.json`` key ``"train"``, never the
validation images) and the BBBC039 images not on the held-out list (with ``--tissue-zooms``
also the DSB fluorescence training images rendered as synthetic H&E tissue by
:mod:`nucleiseg.transforms.tissue`), each zoomed at random in
log-space over ``x0.25 .. x7`` (image by :func:`rescale_image`, ground truth by
:func:`resize_labels`, cropped first so the zoomed image has at most ``--max-side`` pixels a
side). The target is ``log(estimate_diameter(zoomed ground truth))``; the inputs are the probe
statistics of the zoomed image. Reproducible::

    python -m nucleiseg.inference.size_fit --model default

(fixed seed; a few CPU minutes). ``--cache`` keeps the probe statistics so refits are instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from nucleiseg.inference.scale import rescale_image, resize_labels
from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size import SIZE_MODEL_FILE, VIEW, WHOLE_PIXELS, ZOOMS, SizeModel, design, probe_stats
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.transforms import normalize_image

DSB_ROOT = Path("/work/shared/data/dsb2018/stage1_train")
BBBC039_ROOT = Path("/work/shared/data/external/bbbc039")
ZOOM_RANGE = (0.25, 7.0)
MAX_SIDE = 1024
SEED = 14

Loaded = tuple[str, np.ndarray, np.ndarray]


def dsb_images(ids: Sequence[str], root: Path = DSB_ROOT) -> Iterator[Loaded]:
    """``(id, image, labels)`` of DSB samples."""
    from nucleiseg.io.dsb import load_sample

    for i in ids:
        s = load_sample(root / i, check=False)
        yield f"dsb/{i}", s.image, s.labels


def bbbc039_images(ids: Sequence[str], root: Path = BBBC039_ROOT) -> Iterator[Loaded]:
    """``(id, image, labels)`` of BBBC039 images (``images/<id>.tif``, ``masks/<id>.tif``)."""
    from nucleiseg.io.images import read_image, read_labels

    for i in ids:
        yield f"bbbc039/{i}", read_image(root / "images" / f"{i}.tif"), read_labels(root / "masks" / f"{i}.tif")


def tissue_images(ids: Sequence[str], rng: np.random.Generator, root: Path = DSB_ROOT) -> Iterator[Loaded]:
    """``(id, image, labels)`` of DSB fluorescence samples rendered as synthetic H&E tissue.

    Each dark-background image is normalised and rendered by
    :func:`nucleiseg.transforms.tissue.render_tissue` with a seed drawn from ``rng``, so the
    estimator also learns how stained tissue looks to the network (labels unchanged).
    """
    from nucleiseg.config import NormalizeConfig
    from nucleiseg.transforms.tissue import render_tissue

    for key, image, labels in dsb_images(ids, root):
        norm = normalize_image(image, NormalizeConfig())
        if float(norm.mean()) > 0.5:  # already bright-background
            continue
        yield key.replace("dsb/", "tissue/", 1), render_tissue(norm, np.random.default_rng(int(rng.integers(2**31)))), labels


def bbbc039_all_ids(root: Path = BBBC039_ROOT) -> list[str]:
    """Stems of every BBBC039 image."""
    return sorted(p.stem for p in (root / "images").glob("*.tif"))


def zoomed(image: np.ndarray, labels: np.ndarray, zoom: float, max_side: int = MAX_SIDE, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zoom an image and its labels by ``zoom``, cropping first so no zoomed side exceeds ``max_side``.

    The crop is central, or at a random place with ``rng``.
    """
    side = max(1, math.floor(max_side / zoom))
    h, w = labels.shape
    ch, cw = min(h, side), min(w, side)
    if rng is None:
        y0, x0 = (h - ch) // 2, (w - cw) // 2
    else:
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image, labels = image[y0 : y0 + ch, x0 : x0 + cw], labels[y0 : y0 + ch, x0 : x0 + cw]
    if zoom == 1.0:
        return image, labels
    small = rescale_image(image, zoom)
    return small, resize_labels(labels, small.shape[:2])


def probe_function(segmenter: Segmenter) -> Callable[[np.ndarray], np.ndarray]:
    """``(C, h, w) -> (K, h, w)``: the segmenter's plain (no TTA) tiled prediction."""
    from nucleiseg.inference.tiling import predict_tiled

    infer = segmenter.config.infer
    assert segmenter.predictor is not None
    return lambda chw: predict_tiled(
        segmenter.predictor, chw, tile=infer.tile, overlap=infer.overlap, batch_size=infer.batch_size,
        stride=segmenter.stride, blend=infer.blend,
    )


def random_zooms(rng: np.random.Generator, k: int, zoom_range: tuple[float, float] = ZOOM_RANGE) -> list[float]:
    """``k`` zooms drawn log-uniformly from ``zoom_range``."""
    lo, hi = math.log(zoom_range[0]), math.log(zoom_range[1])
    return [float(math.exp(rng.uniform(lo, hi))) for _ in range(k)]


def collect(
    segmenter: Segmenter, samples: Iterator[Loaded], per_image: Callable[[str], int], rng: np.random.Generator,
    zooms: Sequence[float] = ZOOMS, max_side: int = MAX_SIDE, log: bool = True,
) -> dict[str, list]:
    """Probe statistics and true diameters of randomly zoomed samples.

    For each image in turn, ``per_image(key)`` zooms are drawn from ``rng``, then each zoomed
    copy draws its crop position from ``rng``: the samples depend only on the seed and the
    order of the images.

    Returns
    -------
    dict
        ``ids``, ``zoom``, ``true`` (median diameter of the zoomed ground truth), ``stats``.
    """
    predict = probe_function(segmenter)
    out: dict[str, list] = {"ids": [], "zoom": [], "true": [], "stats": []}
    for n, (key, image, labels) in enumerate(samples):
        for zoom in random_zooms(rng, per_image(key)):
            img, lab = zoomed(image, labels, zoom, max_side, rng)
            true = estimate_diameter(lab)
            if not math.isfinite(true):
                continue
            stats, _ = probe_stats(normalize_image(img, segmenter.config.normalize), predict, zooms)
            out["ids"].append(key)
            out["zoom"].append(zoom)
            out["true"].append(float(true))
            out["stats"].append(stats)
        if log and (n + 1) % 50 == 0:
            print(f"  {n + 1} images, {len(out['ids'])} samples", file=sys.stderr)
    return out


def training_samples(model_dir: Path) -> tuple[list[str], list[str]]:
    """DSB training ids of the model (``split.json`` "train") and the BBBC039 training ids."""
    from nucleiseg.io.splits import bbbc039_training

    split = json.loads((model_dir / "split.json").read_text())
    val = set(split["val"])
    dsb = [i for i in split["train"] if i not in val]
    return dsb, bbbc039_training(bbbc039_all_ids())


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
    ratio = np.exp(model.predict_log(x) - y)
    return {"median_abs_log_error": round(float(np.median(np.abs(np.log(ratio)))), 4),
            "within_30pct": round(float(np.mean(np.abs(ratio - 1.0) <= 0.3)), 4)}


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
    ap.add_argument("--cache", type=Path, default=None, help="npz of probe statistics (read if present, else written)")
    ap.add_argument("--out", type=Path, default=None, help=f"output file (default <model>/{SIZE_MODEL_FILE})")
    args = ap.parse_args(argv)

    folder = ModelBundle.open(args.model).folder
    assert folder is not None, f"{args.model}: a model folder is needed"
    target = Segmenter.from_pretrained(folder).config.infer.target_diameter
    if args.cache is not None and args.cache.is_file():
        z = np.load(args.cache, allow_pickle=False)
        data = {"ids": list(z["ids"]), "zoom": list(z["zoom"]), "true": list(z["true"]), "stats": list(z["stats"])}
    else:
        dsb, bbbc = training_samples(folder)
        print(f"probing {len(dsb)} DSB + {len(bbbc)} BBBC039 training images", file=sys.stderr)
        segmenter = Segmenter.from_pretrained(folder)
        rng = np.random.default_rng(args.seed)

        def per_image(key: str) -> int:
            return {"dsb": args.dsb_zooms, "tissue": args.tissue_zooms}.get(key.split("/")[0], args.bbbc_zooms)

        data = collect(segmenter, dsb_images(dsb), per_image, rng, max_side=args.max_side)
        more = collect(segmenter, bbbc039_images(bbbc), per_image, rng, max_side=args.max_side)
        data = {k: data[k] + more[k] for k in data}
        if args.tissue_zooms > 0:
            more = collect(segmenter, tissue_images(dsb, rng), per_image, rng, max_side=args.max_side)
            data = {k: data[k] + more[k] for k in data}
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.cache, ids=np.array(data["ids"]), zoom=np.array(data["zoom"]), true=np.array(data["true"]), stats=np.stack(data["stats"]))
    x = np.stack([design(np.asarray(s), ZOOMS, target) for s in data["stats"]])
    y = np.log(np.asarray(data["true"]))
    if args.kind == "ridge":
        model = SizeModel.fit(x, y, args.alpha)
    else:
        model = fit_mlp(x, y, args.hidden, seed=args.seed)
    model.zooms, model.target, model.view, model.whole_pixels = list(ZOOMS), target, VIEW, WHOLE_PIXELS
    model.meta = {
        "command": "python -m nucleiseg.inference.size_fit " + " ".join(_without_paths(list(argv if argv is not None else sys.argv[1:]))),
        "kind": args.kind, "seed": args.seed, "samples": len(y),
        "data": f"DSB split.json train ids x{args.dsb_zooms} + BBBC039 training ids x{args.bbbc_zooms}"
                f" + DSB fluorescence training ids rendered as synthetic H&E x{args.tissue_zooms}, "
                f"random zoom x{ZOOM_RANGE[0]}..x{ZOOM_RANGE[1]} (log-uniform), zoomed sides <= {args.max_side}",
        "train": _errors(model, x, y),
    }
    out = args.out or folder / SIZE_MODEL_FILE
    model.save(out)
    print(f"wrote {out}: {model.meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
