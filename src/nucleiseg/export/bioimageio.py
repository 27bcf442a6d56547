"""Package a nucleiseg model for bioimage.io (model spec 0.5): deepImageJ/Fiji, napari, ilastik.

The package (a ``.zip`` with ``rdf.yaml``) holds the model folder's ONNX weights (``model.onnx``
from ``nucleiseg export``; the bundled default ships one), pre-processing that reproduces
:func:`nucleiseg.transforms.normalize_image` (``scale_range`` over channels, y and x jointly with
the model's percentiles, then ``clip`` to 0..1), a test input and its expected output computed
with ONNX Runtime, a cover image, Markdown documentation with the model card's accuracy tables,
and the training data's citation (DSB 2018, CC0). The network's outputs are probabilities;
the instance labels come from nucleiseg's watershed post-processing, which bioimage.io does not
describe, so consumers get the probability maps (channel 0: foreground).

Needs the optional extra ``nucleiseg[bioimageio]`` (``bioimageio.spec``; ``bioimageio.core``
to run the model test).
"""

from __future__ import annotations

import gc
import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg import __version__
from nucleiseg.config import ModelBundleConfig, load_json
from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.images import read_image, write_image

__all__ = ["build_bioimageio", "model_card_tables", "normalised_input", "test_tensors"]

REPO_EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "fluo_small.png"
#: Channel names of the probability outputs of contour targets.
OUTPUT_CHANNELS = {1: ["foreground"], 3: ["foreground", "contour", "separation"]}
DSB_CITATION = (
    "Caicedo, J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
    "Nature Methods 16, 1247-1253 (2019)."
)
DSB_DOI = "10.1038/s41592-019-0612-7"


def _require_spec() -> Any:
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise ImportError("the bioimage.io export needs the optional extra: pip install 'nucleiseg[bioimageio]'") from exc
    return v0_5


def model_card_tables(card: Path) -> str:
    """The Markdown tables (with their headings) of a ``MODEL_CARD.md``: the accuracy figures."""
    if not card.is_file():
        return "No model card was found beside the weights.\n"
    keep, heading = [], ""
    for line in card.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line
        elif line.startswith("|"):
            if heading:
                keep += ["", "#" + heading, ""]
                heading = ""
            keep.append(line)
    body = "\n".join(re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line) for line in keep).strip()
    return body + "\n" if body else "The model card holds no accuracy table.\n"


def normalised_input(raw: np.ndarray, config: ModelBundleConfig) -> np.ndarray:
    """nucleiseg's normalisation of a ``(1, C, H, W)`` raw tensor, as the package's pre-processing does it."""
    from nucleiseg.transforms import normalize_image

    image = np.moveaxis(raw[0], 0, -1)
    return np.moveaxis(normalize_image(image, config.normalize), -1, 0)[None].astype(np.float32)


def test_tensors(folder: Path, image: np.ndarray, config: ModelBundleConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(1, C, H, W)`` float32 input and the ONNX Runtime probabilities for it."""
    from nucleiseg.export.runtime import onnx_predictor

    rgb = np.repeat(image[..., None], config.normalize.channels, axis=2) if image.ndim == 2 else image[..., :3]
    raw = np.moveaxis(rgb.astype(np.float32), -1, 0)[None]
    output = onnx_predictor(folder / "model.onnx", threads=1)(normalised_input(raw, config))
    return np.ascontiguousarray(raw), np.ascontiguousarray(output.astype(np.float32))


def _documentation(name: str, config: ModelBundleConfig, card: Path, stride: int) -> str:
    n = config.normalize
    return f"""# nucleiseg `{name}`: nucleus probabilities for 2-D microscopy images

A U-Net ({config.model.arch}, {json.dumps(config.model.params)}) trained by
[nucleiseg](https://github.com/) {__version__} on the Data Science Bowl 2018 stage 1 training
images (fluorescence, brightfield and H&E tissue). It returns, per pixel, the probability of
{", ".join(OUTPUT_CHANNELS.get(config.model.out_channels, ["class"]))}.

## Input and pre-processing

`input`: `(batch, channel={config.model.in_channels}, y, x)` float32; y and x multiples of {stride}.
A gray image is given as {config.model.in_channels} identical channels (deepImageJ: convert to RGB).
Pre-processing (in this package, run by every bioimage.io consumer): the {n.low}th and
{n.high}th percentiles of the whole image (all channels together) are mapped to 0 and 1,
then values are clipped to 0..1 - nucleiseg's own normalisation.

## Output

`probabilities`: `(batch, channel={config.model.out_channels}, y, x)` in 0..1. Threshold the
foreground at 0.5 for a mask. Separated nuclei (instance labels, watershed from the
foreground minus contour and separation) come from nucleiseg itself:
`nucleiseg segment IMAGE -o OUT` or the nucleiseg napari plugin.

## Accuracy (from the model card)

{model_card_tables(card)}
## Training data

DSB 2018 stage 1 training images, CC0 (public domain): {DSB_CITATION} doi:{DSB_DOI}.

## Limits

Trained on 2-D images; apply to stacks plane by plane. Expect lower accuracy on H&E tissue and on
nuclei much larger than about 18 px (nucleiseg rescales images by an estimated nucleus size;
this package does not).
"""


def _cover(image: np.ndarray, output: np.ndarray) -> np.ndarray:
    """2:1 cover: the image and its foreground probability side by side (uint8 RGB)."""
    from nucleiseg.io.images import to_uint8_rgb

    left = to_uint8_rgb(image)
    right = to_uint8_rgb((output[0, 0] * 255).astype(np.uint8))
    right[..., 0] = 0
    return np.concatenate([left, right], axis=1)


def build_bioimageio(model: str | Path, out: str | Path, image: str | Path | None = None) -> Path:
    """Write a bioimage.io model package (``.zip``) of a model folder with ONNX weights.

    Parameters
    ----------
    model : str or Path
        Bundled model name or run folder holding ``config.json`` and ``model.onnx``.
    out : str or Path
        Target ``.zip``.
    image : str or Path, optional
        Test image (default: ``examples/fluo_small.png``).

    Returns
    -------
    Path
        The package written (atomically).

    Raises
    ------
    FileNotFoundError
        No model, or no ``model.onnx`` in it (run ``nucleiseg export NAME`` first).
    """
    v = _require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.generic.v0_3 import Author, CiteEntry, Doi, LicenseId

    from nucleiseg.export.runtime import read_metadata
    from nucleiseg.bundle import ModelBundle

    folder = ModelBundle.open(model).folder
    if folder is None:
        raise ValueError(f"{model}: a bioimage.io package needs a model folder")
    onnx_file = folder / "model.onnx"
    if not onnx_file.is_file():
        raise FileNotFoundError(f"{onnx_file}: no ONNX weights; run `nucleiseg export {model}` first")
    config = load_json(ModelBundleConfig, folder / "config.json")
    stride = int(read_metadata(onnx_file).get("nucleiseg.stride", 32))
    picture = read_image(image or REPO_EXAMPLE)
    raw, output = test_tensors(folder, picture, config)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="nucleiseg-bioimageio-") as tmp:
        work = Path(tmp)
        np.save(work / "test_input.npy", raw)
        np.save(work / "test_output.npy", output)
        write_image(work / "cover.png", _cover(picture, output))
        (work / "README.md").write_text(_documentation(config.name, config, folder / "MODEL_CARD.md", stride), encoding="utf-8")
        n = config.normalize
        size = v.ParameterizedSize(min=4 * stride, step=stride)
        inp = v.InputTensorDescr(
            id=v.TensorId("input"),
            description="raw image; a gray image as identical channels",
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(f"c{i}") for i in range(config.model.in_channels)]),
                  v.SpaceInputAxis(id=v.AxisId("y"), size=size), v.SpaceInputAxis(id=v.AxisId("x"), size=size)],
            test_tensor=v.FileDescr(source=work / "test_input.npy"),
            preprocessing=[
                v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
                v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                    axes=[v.AxisId("channel"), v.AxisId("y"), v.AxisId("x")], min_percentile=n.low, max_percentile=n.high)),
                v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0)),
            ],
        )
        names = OUTPUT_CHANNELS.get(config.model.out_channels) or [f"class{i}" for i in range(config.model.out_channels)]
        outp = v.OutputTensorDescr(
            id=v.TensorId("probabilities"),
            description="per-pixel probabilities: " + ", ".join(names),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in names]),
                  v.SpaceOutputAxis(id=v.AxisId("y"), size=v.SizeReference(tensor_id=v.TensorId("input"), axis_id=v.AxisId("y"))),
                  v.SpaceOutputAxis(id=v.AxisId("x"), size=v.SizeReference(tensor_id=v.TensorId("input"), axis_id=v.AxisId("x")))],
            test_tensor=v.FileDescr(source=work / "test_output.npy"),
        )
        dsb = CiteEntry(text=DSB_CITATION, doi=Doi(DSB_DOI))
        descr = v.ModelDescr(
            name=f"nucleiseg {config.name} nucleus U-Net",
            description="Nucleus probabilities (foreground, contour, separation) for 2-D fluorescence, brightfield and tissue images.",
            authors=[Author(name="nucleiseg developers")],
            cite=[dsb],
            license=LicenseId("MIT"),
            documentation=v.FileDescr(source=work / "README.md"),
            covers=[v.FileDescr(source=work / "cover.png")],
            tags=["nuclei", "instance-segmentation", "unet", "fluorescence-light-microscopy", "2d", "onnx", "dsb2018"],
            inputs=[inp],
            outputs=[outp],
            weights=v.WeightsDescr(onnx=v.OnnxWeightsDescr(source=onnx_file, opset_version=17)),
            training_data=DatasetDescr(
                name="Data Science Bowl 2018 stage 1 training images",
                description="670 annotated 2-D nucleus images (fluorescence, brightfield, H&E tissue); CC0.",
                authors=[Author(name="Broad Bioimage Benchmark Collection, Kaggle Data Science Bowl 2018")],
                cite=[dsb], license=LicenseId("CC0-1.0"), tags=["nuclei", "2d"],
            ),
            version=__version__,
        )
        with atomic_path(out) as target, warnings.catch_warnings():
            # bioimageio.spec leaves the packaged source files open; collect them here, quietly,
            # instead of letting their ResourceWarnings surface at a random later point.
            warnings.simplefilter("ignore", ResourceWarning)
            save_bioimageio_package(descr, output_path=target)
            gc.collect()
    return out
