"""Fast CPU inference: ONNX export (fp32, fp16 weights, int8) and the ONNX Runtime predictor.

Names are imported lazily (PEP 562) so that loading an exported model with
:mod:`nucleiseg.export.runtime` does not pull in the exporter and the quantization tools.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_onnx": "nucleiseg.export.onnx",
    "check_parity": "nucleiseg.export.onnx",
    "format_parity": "nucleiseg.export.onnx",
    "load_torch_model": "nucleiseg.export.onnx",
    "default_image_source": "nucleiseg.export.onnx",
    "convert_fp16": "nucleiseg.export.quantize",
    "quantize_int8": "nucleiseg.export.quantize",
    "calibration_crops": "nucleiseg.export.quantize",
    "OrtPredictor": "nucleiseg.export.runtime",
    "onnx_predictor": "nucleiseg.export.runtime",
    "load_onnx": "nucleiseg.export.runtime",
    "read_metadata": "nucleiseg.export.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nucleiseg.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
