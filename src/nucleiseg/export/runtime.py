"""Run exported ONNX models with ONNX Runtime on the CPU, as ordinary nucleiseg predictors.

An exported model carries its own description in the ONNX ``metadata_props`` (keys in
:data:`META`): the model's stride, the :class:`~nucleiseg.config.ModelBundleConfig` as JSON,
the hash of the source weights and the precision. :class:`OrtPredictor` is a predictor
callable ``(B, C, h, w) float32 -> (B, K, h, w)`` probabilities, so tiling, TTA and the
:class:`~nucleiseg.inference.segmenter.Segmenter` use it exactly like the PyTorch one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.bundle import ONNX_FILES
from nucleiseg.export.metadata import META, read_metadata

__all__ = ["META", "ONNX_FILES", "OrtPredictor", "describe_onnx", "onnx_predictor", "read_metadata"]


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
        #: Intra-op threads asked for (None: ONNX Runtime's default).
        self.threads = threads
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no optimizer chatter on stderr
        # No memory arena: it keeps the largest batch's buffers (about 1 GB for four 1024-pixel
        # tiles) for the life of the session; without it they are freed after every call.
        options.enable_cpu_mem_arena = False
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
