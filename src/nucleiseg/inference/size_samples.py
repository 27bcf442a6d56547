"""The samples a size estimator is fitted on: ground-truth images, zoomed at random, and their probe statistics.

The sources are the DSB 2018 training images of a model (``split.json`` key ``"train"``), the
BBBC039 images not on the held-out list and, on request, the DSB fluorescence images rendered
as synthetic H&E tissue (:func:`tissue_images`). :func:`zoomed` zooms an image with its labels
(cropped first so no zoomed side exceeds ``max_side``), :func:`random_zooms` draws zooms
log-uniformly from :data:`ZOOM_RANGE`, and :func:`collect` runs the size probe
(:func:`nucleiseg.inference.size_probe.probe_stats`) on every zoomed copy, next to the median
diameter of its ground truth. The fit itself is in :mod:`nucleiseg.inference.size_fit`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from nucleiseg.inference.scale import rescale_image, resize_labels
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.inference.size_probe import SHRINK, ZOOMS, probe_stats
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.transforms import normalize_image

DSB_ROOT = Path("/work/shared/data/dsb2018/stage1_train")
BBBC039_ROOT = Path("/work/shared/data/external/bbbc039")
ZOOM_RANGE = (0.25, 7.0)
MAX_SIDE = 1024

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
    segmenter: Segmenter, samples: Iterator[Loaded], zooms_for: Callable[[str], Sequence[float]],
    rng: np.random.Generator | None = None, zooms: Sequence[float] = ZOOMS, max_side: int = MAX_SIDE, log: bool = True,
    extra: Callable[[np.ndarray], dict[str, object]] | None = None, shrink: str = SHRINK,
) -> dict[str, list]:
    """Probe statistics and true diameters of zoomed samples (views shrunk by ``shrink``).

    For each image in turn, ``zooms_for(key)`` gives its zooms (it may draw them from ``rng``),
    then each zoomed copy draws its crop position from ``rng`` (central crops without one): the
    samples depend only on the seed and the order of the images.

    ``extra(norm)``, when given, is called with each zoomed sample's normalised image; the values
    of the dict it returns are kept under its keys (other measurements of the same samples).

    Returns
    -------
    dict
        ``ids``, ``zoom``, ``true`` (median diameter of the zoomed ground truth), ``stats``, and
        the keys of ``extra``.
    """
    predict = probe_function(segmenter)
    out: dict[str, list] = {"ids": [], "zoom": [], "true": [], "stats": []}
    for n, (key, image, labels) in enumerate(samples):
        for zoom in zooms_for(key):
            img, lab = zoomed(image, labels, zoom, max_side, rng)
            true = estimate_diameter(lab)
            if not math.isfinite(true):
                continue
            norm = normalize_image(img, segmenter.config.normalize)
            stats, _ = probe_stats(norm, predict, zooms, shrink=shrink)
            out["ids"].append(key)
            out["zoom"].append(zoom)
            out["true"].append(float(true))
            out["stats"].append(stats)
            for name, value in (extra(norm) if extra is not None else {}).items():
                out.setdefault(name, []).append(value)
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
