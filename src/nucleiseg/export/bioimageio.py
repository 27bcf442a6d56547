"""Package a nucleiseg model for bioimage.io (model spec 0.5): deepImageJ/Fiji, napari, ilastik.

The package (a ``.zip`` with ``rdf.yaml``) holds the model folder's ONNX weights (``model.onnx``
from ``nucleiseg export``; the bundled default ships one), pre-processing that reproduces
:func:`nucleiseg.transforms.normalize_image` (``scale_range`` over channels, y and x jointly with
the model's percentiles, then ``clip`` to 0..1), a test input and its expected output computed
with ONNX Runtime, sample images of both (PNG), a cover image, Markdown documentation with the
model card's accuracy tables, and the training data (from the run's ``split.json``: DSB 2018 and
the extra folders such as BBBC039, with their citations). The output's y and x axes carry a
halo of half the tile overlap nucleiseg uses (``infer.tile * infer.overlap / 2`` pixels), so
consumers that tile (deepImageJ) crop the tile borders and show no seams. The network's outputs are probabilities;
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
from nucleiseg.bundle import FINE_TUNE_FILE, ModelBundle
from nucleiseg.config import ModelBundleConfig, load_json
from nucleiseg.io.atomic import atomic_path
from nucleiseg.io.images import read_image, write_image

__all__ = ["build_bioimageio", "fit_test_image", "model_card_tables", "normalised_input", "output_halo", "test_tensors",
           "training_sets"]

REPO_EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "fluo_wide.png"
#: Channel names of the probability outputs of contour targets.
OUTPUT_CHANNELS = {1: ["foreground"], 3: ["foreground", "contour", "separation"]}
DSB_CITATION = (
    "Caicedo, J.C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
    "Nature Methods 16, 1247-1253 (2019)."
)
DSB_DOI = "10.1038/s41592-019-0612-7"
#: Citation and licence of the extra training folders nucleiseg's models use, by folder name.
KNOWN_SETS = {
    "bbbc039": ("BBBC039 (U2OS cells, Hoechst), Broad Bioimage Benchmark Collection", "CC0-1.0",
                "Caicedo, J.C. et al. Evaluation of Deep Learning Strategies for Nucleus Segmentation in "
                "Fluorescence Images. Cytometry Part A 95, 952-965 (2019).", "10.1002/cyto.a.23863"),
}


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


def output_halo(config: ModelBundleConfig) -> int:
    """Output halo in pixels: half the overlap of nucleiseg's tiles, where a tile's border is not trusted."""
    return max(1, round(config.infer.tile * config.infer.overlap / 2))


def fit_test_image(image: np.ndarray, min_size: int, step: int) -> np.ndarray:
    """Crop (or reflect-pad) y and x to the nearest valid input size ``min_size + k * step``."""
    out = image
    for axis in (0, 1):
        n = out.shape[axis]
        if n < min_size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, min_size - n)
            out = np.pad(out, pad, mode="reflect" if n > min_size - n else "symmetric")
        else:
            keep = min_size + (n - min_size) // step * step
            out = out[:keep] if axis == 0 else out[:, :keep]
    return np.ascontiguousarray(out)


def _split(folder: Path) -> dict[str, Any]:
    """The run's ``split.json`` (empty when the folder has none)."""
    split_file = folder / "split.json"
    return json.loads(split_file.read_text(encoding="utf-8")) if split_file.is_file() else {}


def training_sets(folder: Path) -> list[dict[str, Any]]:
    """The training data of a model folder, from its ``split.json``: DSB 2018 and each extra folder.

    A fine-tuned run names its parent's sets and then the user's images it was fine-tuned on.
    Each entry: ``name``, ``images`` (training images used; None when unknown), ``license``,
    ``citation``, ``doi`` and ``note``.
    """
    if (folder / FINE_TUNE_FILE).is_file():
        return _fine_tune_sets(folder)
    split = _split(folder)
    n_val = len(split.get("val", []))
    sets = [{"name": "Data Science Bowl 2018 stage 1 training images (fluorescence, brightfield, H&E tissue)",
             "images": len(split["train"]) if "train" in split else None, "license": "CC0-1.0",
             "citation": DSB_CITATION, "doi": DSB_DOI,
             "note": f"{n_val} further images held out for validation" if n_val else ""}]
    for extra in split.get("extra", []):
        key = str(extra.get("name", "")).lower()
        title, licence, citation, doi = KNOWN_SETS.get(key, (extra.get("name", "extra folder"), None, "", ""))
        held = len(extra.get("excluded", []))
        sets.append({"name": title, "images": len(extra.get("used", [])), "license": licence, "citation": citation,
                     "doi": doi, "note": f"{held} held-out images never loaded" if held else ""})
    return sets


def _fine_tune_sets(folder: Path) -> list[dict[str, Any]]:
    """The parent's training sets followed by the fine-tuning images of a fine-tuned run."""
    record = json.loads((folder / FINE_TUNE_FILE).read_text(encoding="utf-8"))
    split, parent_name = _split(folder), record.get("parent_name", record["parent"])
    try:
        parent = ModelBundle.open(record["parent"]).folder
    except (FileNotFoundError, ValueError):  # the parent run was moved or deleted
        parent = None
    sets = training_sets(parent) if parent is not None else [
        {"name": f"the training data of `{parent_name}`", "images": None, "license": None,
         "citation": "", "doi": "", "note": "parent model folder not found"}]
    sets.append({"name": f"fine-tuning images ({Path(str(record['data'])).name}, the user's own)",
                 "images": len(split["train"]) if "train" in split else None, "license": None, "citation": "", "doi": "",
                 "note": f"fine-tuned from {parent_name}"})
    return sets


def _training_text(sets: list[dict[str, Any]]) -> str:
    lines = []
    for s in sets:
        count = f"{s['images']} training images" if s["images"] is not None else "training images"
        extra = f"; {s['note']}" if s["note"] else ""
        licence = f", {s['license']}" if s["license"] else ""
        cite = f" {s['citation']} doi:{s['doi']}" if s["doi"] else ""
        lines.append(f"- {s['name']}: {count}{extra}{licence}.{cite}")
    return "\n".join(lines)


def _documentation(name: str, config: ModelBundleConfig, card: Path, stride: int, sets: list[dict[str, Any]]) -> str:
    n = config.normalize
    return f"""# nucleiseg `{name}`: nucleus probabilities for 2-D microscopy images

A U-Net ({config.model.arch}, {json.dumps(config.model.params)}) trained by
[nucleiseg](https://github.com/) {__version__} on {" and ".join(dict.fromkeys(s["name"].split(" (")[0] for s in sets))}.
It returns, per pixel, the probability of
{", ".join(OUTPUT_CHANNELS.get(config.model.out_channels, ["class"]))}.

## Input and pre-processing

`input`: `(batch, channel={config.model.in_channels}, y, x)` float32; y and x at least
{2 * output_halo(config) + 2 * stride} and a multiple of {stride} beyond that.
A gray image is given as {config.model.in_channels} identical channels (deepImageJ: convert to RGB).
Pre-processing (in this package, run by every bioimage.io consumer): the {n.low}th and
{n.high}th percentiles of the whole image (all channels together) are mapped to 0 and 1,
then values are clipped to 0..1 - nucleiseg's own normalisation.

## Output

`probabilities`: `(batch, channel={config.model.out_channels}, y, x)` in 0..1. Threshold the
foreground at 0.5 for a mask. The outer {output_halo(config)} pixels of every tile are
its halo (half of nucleiseg's tile overlap): tiling consumers crop them, so tiles join without seams. Separated nuclei (instance labels, watershed from the
foreground minus contour and separation) come from nucleiseg itself:
`nucleiseg segment IMAGE -o OUT` or the nucleiseg napari plugin.

## Accuracy (from the model card)

{model_card_tables(card)}
## Training data

{_training_text(sets)}

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


def build_bioimageio(model: str | Path, out: str | Path, image: str | Path | None = None, halo: int | None = None) -> Path:
    """Write a bioimage.io model package (``.zip``) of a model folder with ONNX weights.

    Parameters
    ----------
    model : str or Path
        Bundled model name or run folder holding ``config.json`` and ``model.onnx``.
    out : str or Path
        Target ``.zip``.
    image : str or Path, optional
        Test image (default: ``examples/fluo_wide.png``), cropped or padded to a valid input size.
    halo : int, optional
        Output halo in pixels (default :func:`output_halo`: half of nucleiseg's tile overlap);
        a multiple of the network's stride keeps the minimum input size valid.

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

    from nucleiseg.export.runtime import read_metadata

    folder = ModelBundle.open(model).folder
    if folder is None:
        raise ValueError(f"{model}: a bioimage.io package needs a model folder")
    onnx_file = folder / "model.onnx"
    if not onnx_file.is_file():
        raise FileNotFoundError(f"{onnx_file}: no ONNX weights; run `nucleiseg export {model}` first")
    config = load_json(ModelBundleConfig, folder / "config.json")
    stride = int(read_metadata(onnx_file).get("nucleiseg.stride", 32))
    halo = output_halo(config) if halo is None else int(halo)
    min_size = 2 * halo + 2 * stride
    picture = fit_test_image(read_image(image or REPO_EXAMPLE), min_size, stride)
    raw, output = test_tensors(folder, picture, config)
    sets = training_sets(folder)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="nucleiseg-bioimageio-") as tmp:
        work = Path(tmp)
        _write_files(work, picture, raw, output, _documentation(config.name, config, folder / "MODEL_CARD.md", stride, sets))
        descr = _describe(v, config, work, onnx_file, _tensors(v, config, work, min_size, stride, halo), sets)
        with atomic_path(out) as target, warnings.catch_warnings():
            # bioimageio.spec leaves the packaged source files open; collect them here, quietly,
            # instead of letting their ResourceWarnings surface at a random later point.
            warnings.simplefilter("ignore", ResourceWarning)
            save_bioimageio_package(descr, output_path=target)
            gc.collect()
    return out


def _write_files(work: Path, picture: np.ndarray, raw: np.ndarray, output: np.ndarray, readme: str) -> None:
    """The package's files: test tensors (``.npy``), sample images and cover (PNG), documentation."""
    np.save(work / "test_input.npy", raw)
    np.save(work / "test_output.npy", output)
    write_image(work / "sample_input.png", _sample_image(raw * (255.0 / max(float(raw.max()), 255.0))))
    write_image(work / "sample_output.png", _sample_image(output * 255))
    write_image(work / "cover.png", _cover(picture, output))
    (work / "README.md").write_text(readme, encoding="utf-8")


def _sample_image(tensor: np.ndarray) -> np.ndarray:
    """A ``(1, C, H, W)`` tensor as an 8-bit image: ``(H, W, C)``, or ``(H, W)`` for one channel."""
    image = np.clip(np.moveaxis(tensor[0], 0, -1), 0, 255).astype(np.uint8)
    return image[..., 0] if image.shape[-1] == 1 else image


def _tensors(v: Any, config: ModelBundleConfig, work: Path, min_size: int, stride: int, halo: int) -> tuple[Any, Any]:
    """The input and output tensor descriptions (pre-processing, sizes, halo, test and sample tensors)."""
    n = config.normalize
    size = v.ParameterizedSize(min=min_size, step=stride)
    inp = v.InputTensorDescr(
        id=v.TensorId("input"),
        description="raw image; a gray image as identical channels",
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(f"c{i}") for i in range(config.model.in_channels)]),
              v.SpaceInputAxis(id=v.AxisId("y"), size=size), v.SpaceInputAxis(id=v.AxisId("x"), size=size)],
        test_tensor=v.FileDescr(source=work / "test_input.npy"),
        sample_tensor=v.FileDescr(source=work / "sample_input.png"),
        preprocessing=[
            v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
            v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                axes=[v.AxisId("channel"), v.AxisId("y"), v.AxisId("x")], min_percentile=n.low, max_percentile=n.high)),
            v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0)),
        ],
    )
    names = OUTPUT_CHANNELS.get(config.model.out_channels) or [f"class{i}" for i in range(config.model.out_channels)]

    def space(axis: str) -> Any:
        ref = v.SizeReference(tensor_id=v.TensorId("input"), axis_id=v.AxisId(axis))
        return v.SpaceOutputAxisWithHalo(id=v.AxisId(axis), size=ref, halo=halo)

    outp = v.OutputTensorDescr(
        id=v.TensorId("probabilities"),
        description="per-pixel probabilities: " + ", ".join(names),
        axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in names]), space("y"), space("x")],
        test_tensor=v.FileDescr(source=work / "test_output.npy"),
        sample_tensor=v.FileDescr(source=work / "sample_output.png"),
    )
    return inp, outp


def _describe(v: Any, config: ModelBundleConfig, work: Path, onnx_file: Path, tensors: tuple[Any, Any],
              sets: list[dict[str, Any]]) -> Any:
    """The model description: tensors, weights, documentation, citations and training data."""
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.generic.v0_3 import Author, CiteEntry, Doi, LicenseId

    cites = [CiteEntry(text=s["citation"], doi=Doi(s["doi"])) for s in sets if s["doi"]]
    licences = {s["license"] for s in sets}
    data = DatasetDescr(
        name=" + ".join(dict.fromkeys(s["name"].split(" (")[0] for s in sets)),
        description="; ".join(f"{s['name']}: {s['images']} training images" + (f" ({s['note']})" if s["note"] else "")
                              for s in sets),
        authors=[Author(name="Kaggle Data Science Bowl 2018 and Broad Bioimage Benchmark Collection")],
        cite=cites, license=LicenseId(licences.pop()) if len(licences) == 1 and None not in licences else None,
        tags=["nuclei", "2d", "fluorescence-light-microscopy"],
    )
    inp, outp = tensors
    return v.ModelDescr(
        name=f"nucleiseg {config.name} nucleus U-Net",
        description="Nucleus probabilities (foreground, contour, separation) for 2-D fluorescence, brightfield and tissue images.",
        authors=[Author(name="nucleiseg developers")],
        cite=cites,
        license=LicenseId("MIT"),
        documentation=v.FileDescr(source=work / "README.md"),
        covers=[v.FileDescr(source=work / "cover.png")],
        tags=["nuclei", "instance-segmentation", "unet", "fluorescence-light-microscopy", "2d", "onnx", "dsb2018"],
        inputs=[inp],
        outputs=[outp],
        weights=v.WeightsDescr(onnx=v.OnnxWeightsDescr(source=onnx_file, opset_version=17)),
        training_data=data,
        version=__version__,
    )
