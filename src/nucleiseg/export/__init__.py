"""Fast CPU inference: ONNX export (fp32, fp16 weights, int8) and the ONNX Runtime predictor.

Names are imported lazily (PEP 562) so that loading an exported model with
:mod:`nucleiseg.export.runtime` does not pull in the exporter and the quantization tools.
"""

from __future__ import annotations

from nucleiseg._lazy import lazy_exports

_EXPORTS = {
    "export_onnx": "onnx",
    "check_parity": "onnx",
    "format_parity": "onnx",
    "load_torch_model": "onnx",
    "default_image_source": "onnx",
    "convert_fp16": "quantize",
    "quantize_int8": "quantize",
    "calibration_crops": "quantize",
    "OrtPredictor": "runtime",
    "onnx_predictor": "runtime",
    "read_metadata": "runtime",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
