"""The nucleiseg description an exported ONNX model carries in its ``metadata_props``.

An exported model is self-describing: its stride, the
:class:`~nucleiseg.config.ModelBundleConfig` as JSON, the hash of the source weights and the
precision are stored under the keys of :data:`META` by :func:`nucleiseg.export.onnx.export_onnx`.
Reading them needs the ``onnx`` package only (no runtime, no weights).
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
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have multi-line messages
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}
