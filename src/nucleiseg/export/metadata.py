"""The nucleiseg description an exported ONNX model carries in its ``metadata_props``.

An exported model is self-describing: its stride, the
:class:`~nucleiseg.config.ModelBundleConfig` as JSON, the hash of the source weights and the
precision are stored under the keys of :data:`META` by :func:`nucleiseg.export.onnx.export_onnx`.
Reading them needs the ``onnx`` package, or ONNX Runtime where ``onnx`` is not installed (the core install).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["META", "read_metadata"]

#: metadata_props keys written by :func:`nucleiseg.export.onnx.export_onnx`.
META = {
    "config": "nucleiseg.config",
    "stride": "nucleiseg.stride",
    "weights_hash": "nucleiseg.weights_hash",
    "precision": "nucleiseg.precision",
    "source": "nucleiseg.source",
    "version": "nucleiseg.version",
}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded).

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file.
    ValueError
        When it is not a readable ONNX model (one line, naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    try:
        import onnx
    except ImportError:  # the core install has ONNX Runtime only (onnx comes with the [train] extra)
        return _runtime_metadata(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have multi-line messages
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}


def _runtime_metadata(path: Path) -> dict[str, str]:
    """``metadata_props`` read with ONNX Runtime (which loads the whole model)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's load errors are long
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return dict(session.get_modelmeta().custom_metadata_map)
