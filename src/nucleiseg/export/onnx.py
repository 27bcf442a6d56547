"""Export a trained model folder to ONNX (fp32, fp16 weights or int8) and check it against PyTorch.

The exported graph takes a normalised ``(B, C, H, W)`` float32 batch (dynamic batch, height and
width; sides divisible by the model's stride, as the tiler provides) and returns sigmoid
probabilities ``(B, K, H, W)``, so ONNX Runtime's output equals the PyTorch predictor's. The
model's stride, configuration and weights hash go into the ONNX metadata
(:data:`nucleiseg.export.runtime.META`), so an ``.onnx`` file is self-describing.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

from nucleiseg import __version__
from nucleiseg.config import ModelBundleConfig, to_dict
from nucleiseg.export.quantize import INT8_MODES, calibration_crops, calibration_images, convert_fp16, quantize_int8
from nucleiseg.export.runtime import META, ONNX_FILES, OrtPredictor, onnx_predictor
from nucleiseg.io.atomic import atomic_path

if TYPE_CHECKING:
    from nucleiseg.inference.predictors import Predictor
    from nucleiseg.io.labels import InputItem

__all__ = [
    "ProbabilityModel", "check_parity", "default_image_source", "default_out_path", "export_onnx", "format_parity",
    "load_torch_model",
]

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
REPO = Path(__file__).resolve().parents[3]
# Largest side of the real images used by the parity check (keeps it to seconds on a CPU).
PARITY_MAX_SIDE = 512


class ProbabilityModel(nn.Module):
    """Wrap a logits model so that it returns sigmoid probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stride = int(getattr(model, "stride", 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K, H, W)``."""
        return torch.sigmoid(self.model(x))


def load_torch_model(name_or_path: str | Path) -> tuple[nn.Module, ModelBundleConfig, Path, str]:
    """Rebuild a trained model in eval mode.

    Returns
    -------
    tuple
        ``(model, config, folder, weights_hash)``; ``config`` has ``thresholds.json`` applied.
    """
    from nucleiseg.bundle import ModelBundle
    from nucleiseg.training.checkpoint import load_model

    bundle = ModelBundle.open(name_or_path)
    if bundle.folder is None:
        raise ValueError(f"{name_or_path}: a model folder is needed (config.json and weights.safetensors)")
    model = load_model(bundle.config.model, bundle.weights_file())
    return model.eval(), bundle.config, bundle.folder, bundle.weights_hash


def default_image_source(folder: str | Path | None = None) -> Path:
    """Where real images come from when none are given.

    In order: ``$NUCLEISEG_DSB``; the ``data`` folder recorded in the run's ``train.json``
    (relative to the working directory or the repository); the DSB folder beside the
    repository; the repository's ``examples/``.
    """
    candidates: list[Path] = []
    if os.environ.get("NUCLEISEG_DSB"):
        candidates.append(Path(os.environ["NUCLEISEG_DSB"]))
    train = Path(folder) / "train.json" if folder is not None else None
    if train is not None and train.is_file():
        data = json.loads(train.read_text(encoding="utf-8")).get("data")
        if data:
            candidates += [Path(data), REPO / data]
    candidates += [REPO.parent / "shared" / "data" / "dsb2018" / "stage1_train", REPO / "examples"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError("no image folder found for calibration/checks; pass one explicitly")


def _export_graph(model: nn.Module, path: Path, opset: int, in_channels: int) -> None:
    """``torch.onnx.export`` (TorchScript exporter: the dynamo one needs onnxscript) with dynamic axes."""
    wrapped = ProbabilityModel(model).eval()
    side = max(wrapped.stride, 64 // wrapped.stride * wrapped.stride)
    dummy = torch.rand(1, in_channels, side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    # The legacy exporter warns that it is deprecated; that is expected here and must not
    # reach callers (tests run with warnings as errors).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped, (dummy,), str(path), opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            do_constant_folding=True, dynamo=False,
        )


def _checked_out_path(out_path: str | Path, fp16: bool, int8: bool, int8_mode: str) -> Path:
    """Validate the precision options and the ``.onnx`` suffix; return ``out_path`` as a Path."""
    if fp16 and int8:
        raise ValueError("choose fp16 or int8, not both")
    if int8 and int8_mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {', '.join(INT8_MODES)}, got {int8_mode!r}")
    out = Path(out_path)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"{out}: the output file must end in .onnx")
    return out


def _export_metadata(
    model: nn.Module, config: ModelBundleConfig, folder: Path, weights_hash: str, precision: str
) -> dict[str, str]:
    """The ONNX metadata entries (:data:`~nucleiseg.export.runtime.META` keys) of an export."""
    return {
        META["config"]: json.dumps(to_dict(config), sort_keys=True),
        META["stride"]: str(int(getattr(model, "stride", 32))),
        META["weights_hash"]: weights_hash,
        META["precision"]: precision,
        META["source"]: str(folder.resolve()),
        META["version"]: __version__,
    }


def _static_crops(
    folder: Path, config: ModelBundleConfig, calib_source: str | Path | None, count: int, seed: int
) -> list[np.ndarray]:
    """Normalised calibration crops for static int8 (training images only when ``split.json`` exists)."""
    source = Path(calib_source) if calib_source is not None else default_image_source(folder)
    paths = calibration_images(source, folder / "split.json")
    return calibration_crops(paths, count, config.normalize, seed=seed)


def _save_with_metadata(proto: onnx.ModelProto, meta: dict[str, str], out: Path) -> None:
    """Replace the graph's metadata with ``meta``, stamp the producer and write ``out`` atomically."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    proto.producer_name = "nucleiseg"
    proto.producer_version = __version__
    with atomic_path(out) as dst:
        onnx.save(proto, str(dst))


def export_onnx(
    model_dir_or_name: str | Path,
    out_path: str | Path,
    fp16: bool = False,
    int8: bool = False,
    calib_images: int = 32,
    opset: int = 17,
    int8_mode: str = "static",
    calib_source: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Export a model folder (or bundled name) to ONNX, optionally fp16 or int8; atomic write.

    Parameters
    ----------
    model_dir_or_name : str or Path
        Run folder with ``config.json`` + ``weights.safetensors``, or a bundled model name.
    out_path : path
        Destination ``.onnx`` file.
    fp16 : bool
        Store weights as float16 (half the size; compute stays float32).
    int8 : bool
        Quantize to int8 (per-channel weights; see ``int8_mode``).
    calib_images : int
        Number of normalised 256x256 training crops for static int8 calibration.
    opset : int
        ONNX opset.
    int8_mode : {"static", "dynamic"}
        Static QDQ quantization calibrated on crops, or dynamic (weights only).
    calib_source : path, optional
        DSB root or image folder for calibration (default :func:`default_image_source`);
        with a run's ``split.json`` only training images are used.
    seed : int
        Seed of the crop positions.

    Returns
    -------
    Path
        ``out_path``.
    """
    out = _checked_out_path(out_path, fp16, int8, int8_mode)
    model, config, folder, weights_hash = load_torch_model(model_dir_or_name)
    precision = "fp16" if fp16 else f"int8-{int8_mode}" if int8 else "fp32"
    meta = _export_metadata(model, config, folder, weights_hash, precision)
    with tempfile.TemporaryDirectory(prefix="nucleiseg-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _export_graph(model, fp32, opset, config.model.in_channels)
        if int8:
            static = int8_mode == "static"
            crops = _static_crops(folder, config, calib_source, calib_images, seed) if static else None
            proto = onnx.load(str(quantize_int8(fp32, Path(tmp) / "int8.onnx", crops, int8_mode, INPUT_NAME)))
        else:
            proto = onnx.load(str(fp32))
            if fp16:
                proto = convert_fp16(proto)
        _save_with_metadata(proto, meta, out)
    return out


def _center_crop(array: np.ndarray, side: int) -> np.ndarray:
    """Central crop to at most ``side`` x ``side`` pixels."""
    h, w = array.shape[:2]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return array[y0 : y0 + min(h, side), x0 : x0 + min(w, side)]


def _parity_items(folder: Path, source: Path, count: int) -> list[Any]:
    """Validation items (the run's ``split.json`` ``val`` ids when present), first ``count``."""
    from nucleiseg.io.labels import discover_inputs

    items = discover_inputs([source])
    split = folder / "split.json"
    if split.is_file():
        val = set(json.loads(split.read_text(encoding="utf-8")).get("val", []))
        chosen = [it for it in items if it.id in val]
        items = chosen or items
    return items[:count]


@dataclass
class _RealParity:
    """Running differences, scores and label agreement over the real images of a parity check."""

    max_diff: float = 0.0
    sum_diff: float = 0.0
    values: int = 0
    scores_torch: list[float] = field(default_factory=list)
    scores_onnx: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)


def _random_inputs_diff(ref: Predictor, ort: OrtPredictor, channels: int, seed: int) -> float:
    """Largest ``|p_onnx - p_torch|`` on seeded random batches of two sizes (tests the dynamic axes)."""
    stride = ort.stride
    rng = np.random.default_rng(seed)
    random_diff = 0.0
    for shape in ((1, channels, 4 * stride, 6 * stride), (2, channels, 8 * stride, 4 * stride)):
        x = rng.random(shape, dtype=np.float32)
        random_diff = max(random_diff, float(np.abs(ort(x) - ref(x)).max()))
    return random_diff


def _parity_source(images: str | Path | None, folder: Path) -> Path | None:
    """``images``, else :func:`default_image_source`; None when no real images exist anywhere."""
    if images is not None:
        return Path(images)
    try:
        return default_image_source(folder)
    except FileNotFoundError:  # no real images anywhere: random inputs only
        return None


def _compare_image(
    item: InputItem, ref: Predictor, ort: OrtPredictor, config: ModelBundleConfig, max_side: int | None, real: _RealParity
) -> None:
    """Predict one image (central crop) both ways with the model's tiling; add its figures to ``real``."""
    from nucleiseg.inference.tiling import predict_tiled
    from nucleiseg.io.images import read_image
    from nucleiseg.io.labels import load_item_gt
    from nucleiseg.metrics import match_labels
    from nucleiseg.postprocess import probabilities_to_labels
    from nucleiseg.transforms import normalize_image

    infer = config.infer
    image = read_image(item.image_path)
    image = _center_crop(image, max_side) if max_side else image
    chw = normalize_image(image, config.normalize).transpose(2, 0, 1)
    kw = {"tile": infer.tile, "overlap": infer.overlap, "batch_size": infer.batch_size, "stride": ort.stride, "blend": infer.blend}
    p_t, p_o = predict_tiled(ref, chw, **kw), predict_tiled(ort, chw, **kw)
    diff = np.abs(p_t - p_o)
    real.max_diff = max(real.max_diff, float(diff.max()))
    real.sum_diff += float(diff.sum())
    real.values += diff.size
    lab_t = probabilities_to_labels(p_t, config.postprocess)
    lab_o = probabilities_to_labels(p_o, config.postprocess)
    real.agreement.append(match_labels(lab_t, lab_o).competition_score)
    gt = load_item_gt(item)
    if gt is not None:
        gt = _center_crop(gt, max_side) if max_side else gt
        real.scores_torch.append(match_labels(gt, lab_t).competition_score)
        real.scores_onnx.append(match_labels(gt, lab_o).competition_score)


def _parity_report(
    onnx_path: str | Path, ort: OrtPredictor, random_diff: float, items: list[InputItem], real: _RealParity
) -> dict[str, Any]:
    """The parity report dictionary (keys as documented in :func:`check_parity`)."""
    score_t = float(np.mean(real.scores_torch)) if real.scores_torch else None
    score_o = float(np.mean(real.scores_onnx)) if real.scores_onnx else None
    return {
        "precision": ort.metadata.get(META["precision"], "unknown"),
        "onnx_bytes": Path(onnx_path).stat().st_size,
        "max_abs_diff_random": random_diff,
        "max_abs_diff_real": real.max_diff,
        "mean_abs_diff_real": real.sum_diff / real.values if real.values else None,
        "values_compared": real.values,
        "images": [it.id for it in items],
        "score_torch": score_t,
        "score_onnx": score_o,
        "score_diff": None if score_t is None or score_o is None else score_o - score_t,
        "label_agreement": float(np.mean(real.agreement)) if real.agreement else None,
    }


def check_parity(
    model_dir_or_name: str | Path,
    onnx_path: str | Path,
    images: str | Path | None = None,
    n_images: int = 3,
    threads: int | None = None,
    seed: int = 0,
    max_side: int | None = PARITY_MAX_SIDE,
) -> dict[str, Any]:
    """Compare an exported model with PyTorch on random inputs and real validation images.

    Random inputs of two sizes test the dynamic axes; real images (central crops of at most
    ``max_side`` pixels a side, whole images when None) are predicted with the model's tiling
    settings, post-processed with its
    configuration and scored against their ground truth with the competition metric.

    Returns
    -------
    dict
        ``max_abs_diff_random``, ``max_abs_diff_real``, ``mean_abs_diff_real``,
        ``score_torch``, ``score_onnx``, ``score_diff`` (None without ground truth),
        ``label_agreement`` (competition score of the ONNX labels against the torch labels),
        ``images``, ``onnx_bytes`` and ``precision``.
    """
    from nucleiseg.inference.predictors import torch_predictor

    model, config, folder, _ = load_torch_model(model_dir_or_name)
    ref = torch_predictor(model)
    ort = onnx_predictor(onnx_path, threads)
    random_diff = _random_inputs_diff(ref, ort, config.model.in_channels, seed)
    source = _parity_source(images, folder)
    items = _parity_items(folder, source, n_images) if source is not None and n_images > 0 else []
    real = _RealParity()
    for item in items:
        _compare_image(item, ref, ort, config, max_side, real)
    return _parity_report(onnx_path, ort, random_diff, items, real)


def format_parity(report: dict[str, Any]) -> str:
    """The parity report as a few human-readable lines."""

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return "\n".join([
        f"precision {report['precision']}, {report['onnx_bytes'] / 1e6:.2f} MB",
        f"max |p_onnx - p_torch|: random {fmt(report['max_abs_diff_random'], '.2e')}, "
        f"real {fmt(report['max_abs_diff_real'], '.2e')} (mean {fmt(report['mean_abs_diff_real'], '.2e')}) "
        f"on {len(report['images'])} images",
        f"competition score: torch {fmt(report['score_torch'], '.4f')}, onnx {fmt(report['score_onnx'], '.4f')}, "
        f"difference {fmt(report['score_diff'], '+.4f')}; label agreement {fmt(report['label_agreement'], '.4f')}",
    ])


def default_out_path(folder: Path, fp16: bool = False, int8: bool = False) -> Path:
    """``model.onnx`` (fp32), ``model.fp16.onnx`` or ``model.int8.onnx`` inside ``folder``."""
    return folder / ONNX_FILES["fp16" if fp16 else "int8" if int8 else "fp32"]
