"""Smaller ONNX models: fp16 weights and int8 quantization with real calibration crops.

* :func:`convert_fp16` stores every large float32 initializer as float16 and casts it back to
  float32 inside the graph, so the file is about half the size while CPU kernels still compute
  in float32 (ONNX Runtime's CPU provider has few fp16 kernels).
* :func:`quantize_int8` quantizes weights to int8 (per channel) and, in ``"static"`` mode,
  activations to uint8 in QDQ format, calibrated on normalised crops of real training images
  (:func:`calibration_crops`); ``"dynamic"`` mode quantizes weights only and needs no data.
  Before quantizing, :func:`pad_input_channels` gives the first convolution a multiple of 4
  input channels (a zero channel for RGB), which int8 kernels handle far faster.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader

from nucleiseg.config import NormalizeConfig
from nucleiseg.transforms import normalize_image

__all__ = [
    "CropReader",
    "INT8_MODES",
    "calibration_crops",
    "calibration_images",
    "convert_fp16",
    "pad_input_channels",
    "quantize_int8",
]

INT8_MODES = ("static", "dynamic")
#: Input channels of the first convolution are padded to a multiple of this for int8.
INT8_CHANNEL_MULTIPLE = 4
# Initializers smaller than this stay float32 (shapes, scalars): halving them saves nothing.
FP16_MIN_ELEMENTS = 16


def convert_fp16(model: onnx.ModelProto, min_elements: int = FP16_MIN_ELEMENTS) -> onnx.ModelProto:
    """Store float32 initializers as float16, each followed by a ``Cast`` back to float32.

    The graph's inputs, outputs and arithmetic stay float32, so the model runs on every
    provider and its outputs differ from the original only by the weights' rounding.

    Parameters
    ----------
    model : onnx.ModelProto
        A float32 model (modified copy returned; the argument is left untouched).
    min_elements : int
        Initializers with fewer elements are kept in float32.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    casts = []
    kept = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims, dtype=np.int64)) < min_elements:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError(f"initializer {init.name} exceeds the float16 range; export in float32")
        half = numpy_helper.from_array(values.astype(np.float16), name=f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # casts first: the graph stays topologically sorted
    onnx.checker.check_model(out)
    return out


def calibration_images(source: str | Path, split_file: str | Path | None = None) -> list[Path]:
    """Image files to calibrate on: a DSB root, sample folder, image folder or file.

    With ``split_file`` (a run's ``split.json``) only the training ids are used, so validation
    images never influence the quantization that is then checked on them.
    """
    from nucleiseg.io.labels import discover_inputs

    items = discover_inputs([Path(source)])
    if split_file is not None and Path(split_file).is_file():
        train = set(json.loads(Path(split_file).read_text(encoding="utf-8")).get("train", []))
        chosen = [it for it in items if it.id in train]
        items = chosen or items
    if not items:
        raise FileNotFoundError(f"{source}: no images for calibration")
    return [it.image_path for it in items]


def _crop(image: np.ndarray, size: int, rng: random.Random) -> np.ndarray:
    """A random ``size`` x ``size`` crop of an ``(H, W, C)`` image, reflect-padded when smaller."""
    h, w = image.shape[:2]
    if h < size or w < size:
        mode = "reflect" if min(h, w) > 1 else "edge"
        image = np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode=mode)
        h, w = image.shape[:2]
    y0, x0 = rng.randrange(h - size + 1), rng.randrange(w - size + 1)
    return image[y0 : y0 + size, x0 : x0 + size]


def calibration_crops(
    paths: Sequence[str | Path], count: int, normalize: NormalizeConfig, size: int = 256, seed: int = 0
) -> list[np.ndarray]:
    """``count`` normalised ``(C, size, size)`` float32 crops, one per image in turn (seeded).

    Images are drawn without replacement while they last; each gives one random crop after
    :func:`nucleiseg.transforms.normalize_image` on the whole image (as at inference).
    """
    from nucleiseg.io.images import read_image

    if count < 1:
        raise ValueError(f"calibration needs at least one image, got {count}")
    if not paths:
        raise ValueError("no calibration images given")
    rng = random.Random(seed)
    order = list(paths)
    rng.shuffle(order)
    crops = []
    for i in range(count):
        norm = normalize_image(read_image(order[i % len(order)]), normalize)
        crops.append(np.ascontiguousarray(_crop(norm, size, rng).transpose(2, 0, 1), dtype=np.float32))
    return crops


class CropReader(CalibrationDataReader):
    """ONNX Runtime calibration reader handing out one ``(1, C, h, w)`` crop at a time."""

    def __init__(self, crops: Sequence[np.ndarray], input_name: str) -> None:
        self._crops = list(crops)
        self._input = input_name
        self._iter: Iterator[np.ndarray] = iter(self._crops)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, or None when all crops were read."""
        crop = next(self._iter, None)
        return None if crop is None else {self._input: crop[None]}

    def rewind(self) -> None:
        """Start over from the first crop."""
        self._iter = iter(self._crops)


def pad_input_channels(model: onnx.ModelProto, multiple: int = INT8_CHANNEL_MULTIPLE) -> onnx.ModelProto:
    """Give the convolutions that read the graph input a multiple of ``multiple`` input channels.

    ONNX Runtime's int8 convolution packs input channels in groups of four. With three (RGB)
    channels, the full-resolution first layer ran about twice as slowly as with four (42 vs 22
    ms on a 512 x 704 input, one thread). A ``Pad`` node appends zero channels to the input,
    and the weights get matching zero input channels. The result is the same (the extra
    channels add zero), and the model's input is still ``C`` channels. Every reader of the
    input is padded (an ensemble's members each read it); a graph whose input is read by
    anything but plain ``Conv`` nodes with stored weights is returned unchanged. ``model`` is
    changed in place and returned.
    """
    graph = model.graph
    name = graph.input[0].name
    readers = [node for node in graph.node if name in node.input]
    weights = {init.name: init for init in graph.initializer}
    if not readers or any(
        node.op_type != "Conv" or node.input[0] != name or node.input[1] not in weights
        or int(next((a.i for a in node.attribute if a.name == "group"), 1)) != 1
        for node in readers
    ):
        return model
    arrays = {conv.input[1]: numpy_helper.to_array(weights[conv.input[1]]) for conv in readers}
    extra = (-next(iter(arrays.values())).shape[1]) % multiple
    if extra == 0:
        return model
    for key, w in arrays.items():
        padded = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
        weights[key].CopyFrom(numpy_helper.from_array(padded, key))
    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{name}_channel_pads")
    graph.initializer.append(pads)
    graph.node.insert(0, helper.make_node("Pad", [name, pads.name], [f"{name}_padded"], mode="constant", name="pad_input_channels"))
    for conv in readers:
        conv.input[0] = f"{name}_padded"
    return model


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    crops: Sequence[np.ndarray] | None = None,
    mode: str = "static",
    input_name: str = "image",
) -> Path:
    """Quantize an fp32 ONNX model to int8 weights (per channel, 7-bit range so that CPUs without
    VNNI do not saturate), its input channels padded first (:func:`pad_input_channels`).

    Parameters
    ----------
    fp32_path, out_path : path
        Source model and destination (written directly; callers make it atomic).
    crops : sequence of ndarray
        ``(C, h, w)`` normalised calibration crops (``mode="static"`` only).
    mode : {"static", "dynamic"}
        ``static``: QDQ int8 weights and uint8 activations calibrated (min/max) on ``crops``;
        ``dynamic``: int8 weights, activations quantized at run time.
    input_name : str
        The model's input name.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {', '.join(INT8_MODES)}, got {mode!r}")
    if mode == "static" and not crops:
        raise ValueError("static int8 quantization needs calibration crops")
    # ONNX Runtime's recommended pre-processing (graph optimisation + shape inference) before
    # quantization; symbolic shape inference cannot resolve the dynamic spatial axes, and
    # ONNX's own shape inference is enough for these convolutional graphs.
    prepared = Path(out_path).with_name(Path(out_path).stem + ".prep.onnx")
    padded = Path(out_path).with_name(Path(out_path).stem + ".pad.onnx")
    try:
        onnx.save(pad_input_channels(onnx.load(str(fp32_path))), str(padded))
        quant_pre_process(str(padded), str(prepared), skip_symbolic_shape=True)
        # 7-bit weights (reduce_range): ONNX Runtime's u8 x s8 kernels on CPUs without VNNI (AVX2
        # only) add pairs of products in 16 bits and saturate with 8-bit weights. On such a CPU
        # (AMD EPYC, AVX2) the full-range int8 default scored 0.5625 on the 67 validation images
        # against 0.5823 for fp32; with 7-bit weights 0.5835, at the same speed (docs/install.md).
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(out_path), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(prepared), str(out_path), CropReader(crops or [], input_name), quant_format=QuantFormat.QDQ,
                per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
    finally:
        prepared.unlink(missing_ok=True)
        padded.unlink(missing_ok=True)
    return Path(out_path)
