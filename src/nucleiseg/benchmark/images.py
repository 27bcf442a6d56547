"""Benchmark inputs: real images cropped or mirror-tiled to square sizes, with ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["default_images", "fit", "prepare_images"]


def fit(image: np.ndarray, labels: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Central ``size`` x ``size`` crop; smaller images are first mirror-padded (labels get new ids per copy)."""
    h, w = image.shape[:2]
    pad = ((0, max(0, size - h)), (0, max(0, size - w)))
    if pad[0][1] or pad[1][1]:
        image = np.pad(image, pad + ((0, 0),) * (image.ndim - 2), mode="symmetric")
        if labels is not None:
            rows, cols = image.shape[:2]
            copy = (np.arange(rows)[:, None] // h) * (-(-cols // w)) + np.arange(cols)[None, :] // w
            labels = np.pad(labels, pad, mode="symmetric").astype(np.int64)
            labels = np.where(labels > 0, labels + copy * int(labels.max()), 0)
    y0, x0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = np.ascontiguousarray(image[y0 : y0 + size, x0 : x0 + size])
    return crop, None if labels is None else np.ascontiguousarray(labels[y0 : y0 + size, x0 : x0 + size], dtype=np.int32)


def prepare_images(
    source: str | Path | Sequence[str | Path], sizes: Sequence[int], out_dir: str | Path, max_images: int | None = None
) -> dict[int, list[dict[str, Any]]]:
    """Write ``size`` x ``size`` versions of real images (and their ground truth) into ``out_dir``.

    Returns ``{size: [{"id", "path", "gt"}]}``; ``gt`` is an int32 label array or None.
    """
    import tifffile

    from nucleiseg.io.atomic import atomic_path
    from nucleiseg.io.images import read_image, write_image
    from nucleiseg.io.labels import discover_inputs, load_item_gt

    sources = [source] if isinstance(source, (str, Path)) else list(source)
    items = discover_inputs([Path(s) for s in sources])[: max_images or None]
    if not items:
        raise FileNotFoundError(f"{', '.join(map(str, sources))}: no images to benchmark")
    out = Path(out_dir)
    prepared: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes}
    for item in items:
        image, gt = read_image(item.image_path), load_item_gt(item)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        for size in sizes:
            img, lab = fit(image, gt if gt is not None and gt.shape == image.shape[:2] else None, size)
            path = out / f"{item.id}_{size}{'.png' if img.dtype == np.uint8 else '.tif'}"
            if img.dtype == np.uint8:
                write_image(path, img)
            else:
                with atomic_path(path) as tmp:
                    tifffile.imwrite(tmp, img)
            prepared[size].append({"id": item.id, "path": path, "gt": lab})
    return prepared



def default_images(folder: Path) -> Path:
    """The repository's ``examples/`` when present, else the model's training data folder."""
    from nucleiseg.export.onnx import REPO, default_image_source

    examples = REPO / "examples"
    return examples if examples.is_dir() else default_image_source(folder)




def validation_set(model_folder: Path, work: Path, data: str | Path | None = None, max_images: int | None = None) -> Path | None:
    """A DSB-layout folder of the model's validation images (``split.json`` "val"), as they are.

    The samples are linked (not copied) from the training data folder into ``work/dsb_val``, so
    ``nucleiseg segment`` and ``nucleiseg evaluate`` read them like any DSB folder. None when the
    model has no split or its data folder is not here.
    """
    import json

    from nucleiseg.export.onnx import default_image_source

    split = model_folder / "split.json"
    source = Path(data) if data is not None else default_image_source(model_folder)
    if not split.is_file() or not source.is_dir():
        return None
    ids = [i for i in json.loads(split.read_text(encoding="utf-8"))["val"] if (source / i).is_dir()][: max_images or None]
    if not ids:
        return None
    folder = work / "dsb_val"
    folder.mkdir(parents=True)
    for sample in ids:
        (folder / sample).symlink_to((source / sample).resolve(), target_is_directory=True)
    return folder


def single_image(source: Path, work: Path, size: int = 256) -> Path:
    """One ``size`` x ``size`` real image (the first image of ``source``, cropped or mirror-tiled)."""
    folder = work / f"one_{size}"
    item = prepare_images(source, [size], folder, max_images=1)[size][0]
    return Path(item["path"])
