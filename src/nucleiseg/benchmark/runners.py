"""One benchmark pipeline: read -> normalize -> network/TTA -> estimate -> watershed -> measurements -> write.

``estimate`` is the nucleus size estimate of :meth:`Segmenter.segment` (its size probe,
:mod:`nucleiseg.inference.size`) for a model with a size estimator: what it adds to a native
pass, as the segmenter reuses that pass's probabilities for a whole-image zoom-1 view. It is 0
for the baseline and for models without a size estimator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nucleiseg.config import InferConfig, PostprocessConfig

__all__ = ["PIPELINES", "STAGES", "Runner", "make_runner", "snapshot"]

STAGES = ("read", "normalize", "network", "tta", "estimate", "watershed", "measurements", "write")
PIPELINES = ("baseline", "torch", "onnx", "onnx-int8", "onnx-fp16")


def _run_one(
    path: Path, out_dir: Path, normalize: Callable[[np.ndarray], np.ndarray], predict: Callable[[np.ndarray], np.ndarray],
    network_stage: str, postprocess: Callable[[np.ndarray], np.ndarray], naive: bool = False,
    estimate: Callable[[np.ndarray, np.ndarray], object] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """One image through every stage; returns seconds per stage and the labels.

    ``naive`` measures with plain ``regionprops_table`` (the baseline) instead of the vectorised
    :func:`~nucleiseg.io.measure.measure`; both give the same table.
    """
    from nucleiseg.io.images import read_image, write_labels
    from nucleiseg.io.outputs import measure, measure_regionprops, write_measurements

    times: dict[str, float] = {}
    t = time.perf_counter()
    image = read_image(path)
    times["read"], t = time.perf_counter() - t, time.perf_counter()
    norm = normalize(image)
    times["normalize"], t = time.perf_counter() - t, time.perf_counter()
    probs = predict(norm)
    times[network_stage], t = time.perf_counter() - t, time.perf_counter()
    if estimate is not None:
        estimate(norm, probs)
        times["estimate"], t = time.perf_counter() - t, time.perf_counter()
    labels = postprocess(probs)
    times["watershed"], t = time.perf_counter() - t, time.perf_counter()
    table = (measure_regionprops if naive else measure)(labels, image)
    times["measurements"], t = time.perf_counter() - t, time.perf_counter()
    write_labels(out_dir / f"{path.stem}_masks.tif", labels)
    write_measurements(out_dir / f"{path.stem}_measurements.csv", table)
    times["write"] = time.perf_counter() - t
    return times, labels


def _current(onnx_path: Path, weights_hash: str) -> bool:
    """True if ``onnx_path`` exists and was exported from the weights with ``weights_hash``."""
    from nucleiseg.export.runtime import META, read_metadata

    return onnx_path.is_file() and read_metadata(onnx_path).get(META["weights_hash"]) == weights_hash


Runner = Callable[[Path], tuple[dict[str, float], np.ndarray]]


def make_runner(
    name: str, model_dir: Path, tta: bool, infer: InferConfig, work: Path, threads: int | None,
    calib_source: str | Path | None, weights_hash: str,
) -> Runner:
    """``path -> (seconds per stage, labels)`` for one pipeline; outputs go to ``work/out``."""
    from skimage.measure import label as connected_components

    from nucleiseg.export.onnx import export_onnx, load_torch_model
    from nucleiseg.inference.predictors import torch_predictor
    from nucleiseg.inference.segmenter import Segmenter
    from nucleiseg.inference.tiling import predict_tiled
    from nucleiseg.inference.tta import tta_predictor
    from nucleiseg.postprocess import probabilities_to_labels
    from nucleiseg.transforms import normalize_image

    if name == "baseline":
        model, config, _, _ = load_torch_model(model_dir)
        whole = torch_predictor(model)
        return lambda path: _run_one(
            path, work / "out", lambda img: normalize_image(img, config.normalize),
            lambda norm: whole(norm.transpose(2, 0, 1)[None])[0],  # whole image; the model pads to its stride
            "network", lambda probs: connected_components(probs[0] > 0.5, connectivity=1).astype(np.int32), naive=True,
        )
    if name == "torch":
        seg = Segmenter.from_pretrained(model_dir, backend="torch")
    else:
        from nucleiseg.export.runtime import ONNX_FILES, backend_precision

        onnx_path = model_dir / ONNX_FILES[backend_precision(name)]  # shipped with the model
        if not _current(onnx_path, weights_hash):
            onnx_path = work / f"{name}.onnx"
            if not onnx_path.is_file():
                export_onnx(model_dir, onnx_path, fp16=name == "onnx-fp16", int8=name == "onnx-int8", calib_images=16, calib_source=calib_source)
        seg = Segmenter.from_pretrained(onnx_path, backend="onnx")
        if threads is not None:
            from nucleiseg.export.runtime import onnx_predictor

            seg.predictor = onnx_predictor(onnx_path, threads)
    net = tta_predictor(seg.predictor) if tta else seg.predictor
    kw = {"tile": infer.tile, "overlap": infer.overlap, "batch_size": infer.batch_size, "stride": seg.stride, "blend": infer.blend}
    post: PostprocessConfig = seg.config.postprocess
    return lambda path: _run_one(
        path, work / "out", lambda img: normalize_image(img, seg.config.normalize),
        lambda norm: predict_tiled(net, norm.transpose(2, 0, 1), **kw),
        "tta" if tta else "network", lambda probs: probabilities_to_labels(probs, post),
        estimate=_size_estimate(seg, kw, reuse=not tta) if seg.size_model is not None else None,
    )


def _size_estimate(seg: object, kw: dict, reuse: bool) -> Callable[[np.ndarray, np.ndarray], object]:
    """``(norm, native probs) -> diameter``: the segmenter's size probe, the native pass reused
    (``reuse``; a TTA pass is not: the probe predicts without TTA)."""
    from nucleiseg.inference.size import estimate_size
    from nucleiseg.inference.tiling import predict_tiled

    def run(norm: np.ndarray, native: np.ndarray) -> float:
        def predict(chw: np.ndarray) -> np.ndarray:
            if reuse and chw.shape[1:] == norm.shape[:2] and native.shape[1:] == norm.shape[:2]:
                return native  # the whole image at zoom 1: the pass the segmenter reuses
            return predict_tiled(seg.predictor, chw, **kw)  # type: ignore[attr-defined]

        return estimate_size(norm, predict, seg.size_model).diameter  # type: ignore[attr-defined]

    return run



def snapshot(folder: Path, dest: Path) -> Path:
    """Copy a model folder's config, weights, thresholds and exported ONNX files to ``dest``."""
    import shutil

    dest.mkdir(parents=True)
    for name in ("config.json", "weights.safetensors", "thresholds.json", "split.json", "train.json", "size_model.json",
                 "model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, dest / name)
    return dest


