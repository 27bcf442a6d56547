"""A model folder, resolved once: :class:`ModelBundle` and the picklable :class:`ModelSpec`.

A *model folder* is what ``nucleiseg train`` writes and what the package bundles under
``weights/<name>/``: ``config.json`` (:class:`~nucleiseg.config.ModelBundleConfig`),
``weights.safetensors``, optional ``thresholds.json`` (tuned post-processing, applied on top of
the config), optional ``size_model.json`` (nucleus size estimator) and the ONNX forms written by
``nucleiseg export`` (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``).

Everything that needs a model folder (the segmenter, ONNX export and runtime, validation,
benchmarks, the web app, Dask workers) opens it here, so the rules (bundled name or path,
thresholds applied, hash of the weights, which ONNX forms exist) live in one place. This module
only reads files: it imports neither PyTorch nor ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from nucleiseg.config import ModelBundleConfig, PostprocessConfig, from_dict, load_json

__all__ = [
    "CLASSICAL", "FINE_TUNE_FILE", "ONNX_FILES", "RUN_PREFIX", "WEIGHTS_DIR", "ModelBundle", "ModelSpec", "file_hash", "list_bundled",
    "onnx_precision", "reserved_name_error", "reserved_names",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The network-free baseline model's name.
CLASSICAL = "classical"
#: File inside a model folder for each ONNX precision (``nucleiseg export`` writes these names).
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
#: The record of a fine-tune inside its run folder (parent, data, recipe).
FINE_TUNE_FILE = "fine_tune.json"


def file_hash(path: str | Path) -> str:
    """SHA-256 hex digest of a file (the model hash written into every output sidecar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_bundled() -> list[str]:
    """Names of the models bundled in the package (folders of ``weights/`` with a ``config.json``), sorted."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "config.json").is_file())


#: Prefix that addresses a training run by its folder name where a bare name could be a bundled model (``run:NAME``).
RUN_PREFIX = "run:"


def reserved_names() -> list[str]:
    """Names that always mean a bundled model (every :func:`list_bundled` name and ``classical``).

    No training run may take one: a run is addressed by its folder (or, in the web app, as
    ``run:NAME``), and these names keep meaning the bundled models everywhere.
    """
    return [*list_bundled(), CLASSICAL]


def reserved_name_error(name: str) -> str | None:
    """The one-line refusal of a run named ``name`` when it is reserved (case-insensitive), else None."""
    if name.lower() in {n.lower() for n in reserved_names()}:
        return (f"'{name}' is the name of a bundled model ({', '.join(reserved_names())} are reserved); "
                "choose another run name")
    return None


def _bare_bundled(name_or_path: str | Path) -> Path | None:
    """The bundled model folder when ``name_or_path`` is a bare bundled name (no folder part), else None."""
    text = str(name_or_path)
    if Path(text).name != text or text in (".", ".."):
        return None
    folder = WEIGHTS_DIR / text
    return folder if (folder / "config.json").is_file() else None


def onnx_precision(backend: str) -> str:
    """The ONNX precision a backend name selects: ``onnx`` -> fp32, ``onnx-int8`` -> int8, ..."""
    return backend.removeprefix("onnx").removeprefix("-") or "fp32"


def _folder_config(folder: Path) -> ModelBundleConfig:
    """``config.json`` of a model folder with ``thresholds.json`` applied."""
    config = load_json(ModelBundleConfig, folder / "config.json")
    tuned = folder / "thresholds.json"
    if tuned.is_file():
        config = replace(config, postprocess=load_json(PostprocessConfig, tuned))
    return config


def _resolve_folder(name_or_path: str | Path) -> Path:
    """A bare bundled name is the bundled model even beside a folder of that name (``./default`` is the folder)."""
    bundled = _bare_bundled(name_or_path)
    if bundled is not None:
        return bundled
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{name_or_path}: no model there (a run folder needs config.json and weights.safetensors; "
        f"bundled models: {', '.join(list_bundled() + [CLASSICAL])})"
    )


@dataclass(frozen=True)
class ModelBundle:
    """One model, resolved: where it is, its configuration and the files it has.

    Attributes
    ----------
    name : str
        Display name (``config.name``, else the folder's name).
    config : ModelBundleConfig
        The configuration with ``thresholds.json`` applied (for an ``.onnx`` file without a
        ``config.json`` beside it: the configuration stored in its metadata).
    folder : Path or None
        The model folder (None for the classical model and a lone ``.onnx`` file).
    weights : Path or None
        ``weights.safetensors`` when present.
    onnx : dict
        Precision (``fp32``, ``fp16``, ``int8``) -> ONNX file, for the forms that exist.
    size_model : Path or None
        ``size_model.json`` when present.
    """

    name: str
    config: ModelBundleConfig
    folder: Path | None = None
    weights: Path | None = None
    onnx: dict[str, Path] = field(default_factory=dict)
    size_model: Path | None = None

    @classmethod
    def open(cls, name_or_path: str | Path) -> ModelBundle:
        """Resolve ``"classical"``, a bundled model name, a model folder or an ``.onnx`` file.

        Raises
        ------
        FileNotFoundError
            With the bundled names when nothing matches.
        ValueError
            For an ``.onnx`` file with no configuration in its metadata nor beside it.
        """
        if str(name_or_path) == CLASSICAL:
            return cls(CLASSICAL, ModelBundleConfig(name=CLASSICAL))
        path = Path(name_or_path)
        if path.suffix.lower() == ".onnx":
            return cls._open_onnx(path)
        folder = _resolve_folder(name_or_path)
        config = _folder_config(folder)
        weights = folder / "weights.safetensors"
        size = folder / "size_model.json"
        onnx = {p: folder / f for p, f in ONNX_FILES.items() if (folder / f).is_file()}
        return cls(config.name or folder.name, config, folder, weights if weights.is_file() else None, onnx,
                   size if size.is_file() else None)

    @classmethod
    def _open_onnx(cls, path: Path) -> ModelBundle:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        from nucleiseg.export.metadata import META, read_metadata  # the onnx package, only for a lone .onnx file

        meta = read_metadata(path)
        precision = meta.get(META["precision"], "fp32").split("-")[0]
        size = path.parent / "size_model.json"
        if META["config"] in meta:
            config = from_dict(ModelBundleConfig, json.loads(meta[META["config"]]))
        elif (path.parent / "config.json").is_file():
            config = _folder_config(path.parent)
        else:
            raise ValueError(f"{path}: no nucleiseg configuration in the ONNX metadata (and no config.json beside it)")
        return cls(config.name or path.parent.name, config, None, None, {precision: path}, size if size.is_file() else None)

    @property
    def is_classical(self) -> bool:
        """True for the network-free baseline."""
        return self.name == CLASSICAL and self.folder is None and not self.onnx

    @cached_property
    def weights_hash(self) -> str:
        """SHA-256 of ``weights.safetensors`` ("" when there are none)."""
        return file_hash(self.weights) if self.weights is not None else ""

    def weights_file(self) -> Path:
        """``weights.safetensors``, or FileNotFoundError naming it."""
        if self.weights is None:
            where = self.folder if self.folder is not None else self.name
            raise FileNotFoundError(f"{where}/weights.safetensors: weights file missing")
        return self.weights

    def onnx_file(self, precision: str = "fp32") -> Path:
        """The ONNX form of ``precision``, or FileNotFoundError with the export command that makes it."""
        if precision not in ONNX_FILES:
            raise ValueError(f"unknown ONNX precision {precision!r} (choose {', '.join(ONNX_FILES)})")
        if precision in self.onnx:
            return self.onnx[precision]
        if self.folder is None and self.onnx:  # a lone .onnx file is whatever precision it is
            return next(iter(self.onnx.values()))
        flag = "" if precision == "fp32" else f" --{precision}"
        where = self.folder if self.folder is not None else Path(self.name)
        raise FileNotFoundError(f"{where / ONNX_FILES[precision]}: no ONNX model (create it with: nucleiseg export {where} --format onnx{flag})")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker process needs to load the same model: small, picklable, hashable.

    Attributes
    ----------
    model : str
        ``"classical"``, a bundled name, an absolute model folder or an ``.onnx`` file.
    backend : str
        Predictor backend (see :data:`nucleiseg.inference.predictors.BACKENDS`; ``"auto"``
        picks the model's fastest form).
    device : str
        Torch device (the PyTorch backend only).
    threads : int or None
        Intra-op threads of the network runtime (None: the library's default).
    """

    model: str = "default"
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None

    @classmethod
    def of(cls, model: str | Path = "default", backend: str = "auto", device: str = "cpu", threads: int | None = None) -> ModelSpec:
        """A spec with a relative model folder made absolute, so workers started elsewhere find it.

        Raises :class:`~nucleiseg.devices.DeviceError` (a ``ValueError``) for a device that cannot be used.
        """
        from nucleiseg.devices import check_device

        check_device(device)
        text = str(model)
        path = Path(text)
        if text != CLASSICAL and _bare_bundled(text) is None and ((path / "config.json").is_file() or path.suffix.lower() == ".onnx"):
            text = str(path.resolve())
        return cls(text, backend, device, threads)
