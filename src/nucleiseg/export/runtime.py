"""Run exported ONNX models with ONNX Runtime on the CPU, as ordinary nucleiseg predictors.

An exported model carries its own description in the ONNX ``metadata_props`` (keys in
:data:`META`): the model's stride, the :class:`~nucleiseg.config.ModelBundleConfig` as JSON,
the hash of the source weights and the precision. :class:`OrtPredictor` is a predictor
callable ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities, so tiling, TTA and the
:class:`~nucleiseg.inference.segmenter.Segmenter` use it exactly like the PyTorch one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.config import ModelBundleConfig, PostprocessConfig, from_dict, load_json

__all__ = ["META", "ONNX_FILES", "ONNX_NAME", "OrtPredictor", "backend_precision", "bundle_config", "describe_onnx", "load_onnx", "onnx_predictor", "read_metadata"]

ONNX_NAME = "model.onnx"
#: File inside a model folder for each ONNX precision (``nucleiseg export`` writes these names).
ONNX_FILES = {"fp32": ONNX_NAME, "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def backend_precision(backend: str) -> str:
    """The ONNX precision a backend name selects: ``onnx`` -> fp32, ``onnx-int8`` -> int8, ..."""
    return backend.removeprefix("onnx").removeprefix("-") or "fp32"
# metadata_props keys written by nucleiseg.export.onnx.export_onnx
META = {
    "config": "nucleiseg.config",
    "stride": "nucleiseg.stride",
    "weights_hash": "nucleiseg.weights_hash",
    "precision": "nucleiseg.precision",
    "source": "nucleiseg.source",
    "version": "nucleiseg.version",
}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have multi-line messages
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}


class OrtPredictor:
    """Predictor callable backed by an ONNX Runtime CPU session.

    Parameters
    ----------
    path : path
        The ``.onnx`` file (outputs must be probabilities, as :func:`export_onnx` writes).
    threads : int, optional
        Intra-op threads (ONNX Runtime's default, one per physical core, when None).

    Attributes
    ----------
    session : onnxruntime.InferenceSession
    input_name : str
        Name of the model's single input, read from the session.
    stride : int
        Side multiple the model needs (from the metadata; 32 when absent).
    metadata : dict
        The model's ``metadata_props``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{self.path}: ONNX Runtime cannot load the model ({first})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one model input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.stride = int(self.metadata.get(META["stride"], 32))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, K, h, w)`` for a ``(B, C, h, w)`` batch with sides divisible by ``stride``."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(f"{self.path.name}: input must be (B, C, h, w) with sides divisible by {self.stride}, got {x.shape}")
        return self.session.run(None, {self.input_name: x})[0]

    def __repr__(self) -> str:
        return f"OrtPredictor({str(self.path)!r}, stride={self.stride})"


def onnx_predictor(path: str | Path, threads: int | None = None) -> OrtPredictor:
    """An ONNX Runtime CPU predictor for ``path`` (see :class:`OrtPredictor`)."""
    return OrtPredictor(path, threads)


def bundle_config(metadata: dict[str, str], path: str | Path = "model.onnx") -> ModelBundleConfig:
    """The :class:`ModelBundleConfig` stored in an exported model's metadata."""
    text = metadata.get(META["config"])
    if text is None:
        raise ValueError(f"{path}: no nucleiseg configuration in the ONNX metadata (and no config.json beside it)")
    return from_dict(ModelBundleConfig, json.loads(text))


def _folder_config(folder: Path) -> ModelBundleConfig:
    """``config.json`` of a model folder, with ``thresholds.json`` applied like the torch backend."""
    config = load_json(ModelBundleConfig, folder / "config.json")
    tuned = folder / "thresholds.json"
    if tuned.is_file():
        config = replace(config, postprocess=load_json(PostprocessConfig, tuned))
    return config


def load_onnx(
    name_or_path: str | Path, threads: int | None = None, precision: str = "fp32"
) -> tuple[ModelBundleConfig, OrtPredictor, str, str]:
    """Load an exported model for :meth:`Segmenter.from_pretrained(..., backend="onnx")`.

    Parameters
    ----------
    name_or_path : str or Path
        An ``.onnx`` file (its configuration comes from its metadata, else from a
        ``config.json`` beside it), or a model folder / bundled name holding ``model.onnx``
        (configured by the folder's ``config.json`` and ``thresholds.json``, as with torch).
    threads : int, optional
        ONNX Runtime intra-op threads.
    precision : {"fp32", "fp16", "int8"}
        Which file of a model folder to load (:data:`ONNX_FILES`); ignored for an ``.onnx`` path.

    Returns
    -------
    tuple
        ``(config, predictor, name, model_hash)``; the hash is the ONNX file's SHA-256.
    """
    from nucleiseg.inference.segmenter import resolve_model_dir
    from nucleiseg.training.checkpoint import file_hash

    path = Path(name_or_path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        predictor = onnx_predictor(path, threads)
        if META["config"] in predictor.metadata:
            config = bundle_config(predictor.metadata, path)
        elif (path.parent / "config.json").is_file():
            config = _folder_config(path.parent)
        else:
            config = bundle_config(predictor.metadata, path)
    else:
        if precision not in ONNX_FILES:
            raise ValueError(f"unknown ONNX precision {precision!r} (choose {', '.join(ONNX_FILES)})")
        folder = resolve_model_dir(name_or_path)
        path = folder / ONNX_FILES[precision]
        if not path.is_file():
            flag = "" if precision == "fp32" else f" --{precision}"
            raise FileNotFoundError(f"{path}: no ONNX model (create it with: nucleiseg export {folder} --format onnx{flag})")
        config = _folder_config(folder)
        predictor = onnx_predictor(path, threads)
    precision = predictor.metadata.get(META["precision"], "fp32")
    name = f"{config.name or path.parent.name}-onnx-{precision}"
    return config, predictor, name, file_hash(path)


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """Size, precision, stride and source hash of an exported model (for reports)."""
    meta = read_metadata(path)
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "precision": meta.get(META["precision"], "unknown"),
        "stride": int(meta.get(META["stride"], 32)),
        "weights_hash": meta.get(META["weights_hash"], ""),
    }
