"""The one Python API that the CLI, the web app and Dask all call: :class:`Segmenter`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nucleiseg.config import (
    InferConfig,
    ModelBundleConfig,
    PostprocessConfig,
    load_json,
    to_dict,
)
from nucleiseg.inference.predictors import Predictor
from nucleiseg.inference.scale import rescale_image, resize_probabilities, scale_factor
from nucleiseg.inference.size import SizeModel, estimate_size, load_size_model
from nucleiseg.inference.tiling import predict_tiled
from nucleiseg.inference.tta import multiscale_predictor, tta_predictor
from nucleiseg.postprocess import (
    classical_segment,
    estimate_diameter,
    probabilities_to_labels,
)
from nucleiseg.transforms import normalize_image

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
CLASSICAL = "classical"
#: Inference engines of :meth:`Segmenter.from_pretrained`.
BACKENDS = ("torch", "onnx", "onnx-fp16", "onnx-int8")
# Re-segment at a new scale only when nuclei are off the training scale by more than this factor.


@dataclass
class Result:
    """The segmentation of one image.

    Attributes
    ----------
    labels : ndarray of int32, shape (H, W)
        Instance labels 1..n, 0 is background, at the input's resolution.
    probabilities : ndarray of float32, shape (K, H, W), or None
        Network outputs at the input's resolution (None for the classical model).
    diameter : float or None
        Estimated (or given) typical nucleus diameter in input pixels.
    scale : float
        Factor the image was rescaled by before the network (1.0 = native).
    timings : dict
        Seconds per stage (``estimate``: finding the nucleus size, when it was estimated).
    diameter_source : str or None
        Where ``diameter`` came from: ``"given"`` (``infer.diameter``), ``"size_model"`` (the
        model's size estimator, :mod:`nucleiseg.inference.size`), ``"first_pass"`` (objects of a
        native pass, for models without a size estimator), ``"labels"`` (classical model), or
        None when there is no diameter.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    diameter: float | None
    scale: float
    timings: dict[str, float] = field(default_factory=dict)
    diameter_source: str | None = None

    @property
    def count(self) -> int:
        """Number of nuclei found."""
        return int(len(np.unique(self.labels)) - (1 if (self.labels == 0).any() else 0))


class SizeFinding(NamedTuple):
    """What :meth:`Segmenter.estimate_size` found.

    Attributes
    ----------
    diameter : float or None
        Median nucleus diameter in input pixels (None when no nucleus is seen).
    native : np.ndarray or None
        Native-resolution probabilities of the whole image, exactly as :meth:`Segmenter.segment`
        computes them, when the estimate computed them on the way (reused at native scale).
    labels : np.ndarray or None
        Their labels, when the estimate computed them too.
    source : str or None
        ``"size_model"`` or ``"first_pass"``.
    """

    diameter: float | None
    native: np.ndarray | None
    labels: np.ndarray | None
    source: str | None


def bundled_models() -> list[str]:
    """Names of the models bundled in the package (folders of ``weights/`` with a ``config.json``), sorted."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Find a model folder: a run folder path, or the name of a model bundled in the package.

    Raises
    ------
    FileNotFoundError
        With the list of bundled names when nothing matches.
    """
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    bundled = WEIGHTS_DIR / str(name_or_path)
    if (bundled / "config.json").is_file():
        return bundled
    names = bundled_models()
    raise FileNotFoundError(
        f"{name_or_path}: no model there (a run folder needs config.json and weights.safetensors; "
        f"bundled models: {', '.join(names + [CLASSICAL])})"
    )


class Segmenter:
    """Segment nuclei with a trained network (or the classical baseline).

    Use :meth:`from_pretrained` to load a bundled model by name or a run folder by path.

    Parameters
    ----------
    config : ModelBundleConfig
        Model, normalisation, post-processing and inference settings.
    predictor : callable or None
        ``(B, C, h, w) -> (B, K, h, w)`` probabilities; None selects the classical baseline.
    stride : int
        Side multiple the predictor needs.
    name, model_hash : str
        Written into every output's sidecar.
    size_model : SizeModel or None
        Nucleus size estimator (``size_model.json`` of the model folder); without one the size
        is estimated from the objects of a first pass at native resolution.
    """

    def __init__(
        self,
        config: ModelBundleConfig,
        predictor: Predictor | None,
        stride: int = 32,
        name: str = CLASSICAL,
        model_hash: str = "",
        size_model: SizeModel | None = None,
    ) -> None:
        self.config = config
        self.predictor = predictor
        self.stride = stride
        self.name = name
        self.model_hash = model_hash
        self.size_model = size_model
        #: ``(name_or_path, device, backend)`` when loaded by :meth:`from_pretrained`, so worker
        #: processes can load the same model.
        self.source: tuple[str, str, str] | None = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = "default", device: str = "cpu", backend: str = "torch", threads: int | None = None
    ) -> Segmenter:
        """Load ``"classical"``, a bundled model name or a run folder.

        Parameters
        ----------
        name_or_path : str or Path
            ``"classical"``, a bundled name such as ``"default"``, or a folder holding
            ``config.json`` and ``weights.safetensors``.
        device : str
            Torch device.
        backend : {"torch", "onnx", "onnx-fp16", "onnx-int8"}
            Inference engine: PyTorch, or ONNX Runtime on the CPU with the folder's
            ``model.onnx``, ``model.fp16.onnx`` or ``model.int8.onnx`` (``nucleiseg export``), or
            with a given ``.onnx`` file (any ``onnx*`` backend).
        threads : int, optional
            ONNX Runtime intra-op threads (its default, one per core, when None). PyTorch's
            thread count is process-wide: set it with ``torch.set_num_threads``.
        """
        seg = cls._load(name_or_path, device, backend, threads)
        seg.source = (str(name_or_path), device, backend)
        return seg

    @classmethod
    def _load(cls, name_or_path: str | Path, device: str, backend: str, threads: int | None) -> Segmenter:
        if str(name_or_path) == CLASSICAL:
            return cls(ModelBundleConfig(name=CLASSICAL), None)
        if backend in BACKENDS[1:]:  # <folder>/model[.fp16|.int8].onnx or an .onnx file, run by ONNX Runtime
            from nucleiseg.export.runtime import backend_precision, load_onnx

            onnx_config, ort_predictor, onnx_name, onnx_hash = load_onnx(name_or_path, threads, backend_precision(backend))
            path = Path(name_or_path)
            size_dir = path.parent if path.suffix.lower() == ".onnx" else resolve_model_dir(name_or_path)
            return cls(onnx_config, ort_predictor, ort_predictor.stride, onnx_name, onnx_hash, load_size_model(size_dir))
        if backend != "torch":
            raise ValueError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
        from nucleiseg.inference.predictors import torch_predictor
        from nucleiseg.training.checkpoint import file_hash, load_model

        folder = resolve_model_dir(name_or_path)
        config = load_json(ModelBundleConfig, folder / "config.json")
        weights = folder / "weights.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: weights file missing")
        tuned = folder / "thresholds.json"
        if tuned.is_file():
            config = replace(config, postprocess=load_json(PostprocessConfig, tuned))
        model = load_model(config.model, weights)
        return cls(
            config, torch_predictor(model, device), int(getattr(model, "stride", 32)), config.name or folder.name,
            file_hash(weights), load_size_model(folder),
        )

    @property
    def is_classical(self) -> bool:
        """True for the network-free baseline."""
        return self.predictor is None

    def describe(self, infer: InferConfig | None = None, post: PostprocessConfig | None = None) -> dict[str, Any]:
        """Model name, hash and the settings in force (for sidecars and the API)."""
        return {
            "model": self.name,
            "model_hash": self.model_hash,
            "arch": None if self.is_classical else self.config.model.arch,
            "postprocess": to_dict(post or self.config.postprocess),
            "infer": to_dict(infer or self.config.infer),
        }

    def _probabilities(self, image: np.ndarray, infer: InferConfig) -> np.ndarray:
        """Tiled probabilities of a normalised ``(H, W, C)`` image, with the TTA and scales of ``infer``."""
        assert self.predictor is not None
        predictor = self.predictor
        if infer.tta:
            predictor = tta_predictor(predictor)
        if len(infer.scales) > 1 or infer.scales[0] != 1.0:
            predictor = multiscale_predictor(predictor, infer.scales, self.stride)
        return self._tiled(predictor, image.transpose(2, 0, 1), infer)

    def _tiled(self, predictor: Predictor, image_chw: np.ndarray, infer: InferConfig) -> np.ndarray:
        """``predict_tiled`` with the tiling settings of ``infer`` (the size probe calls it with the plain predictor)."""
        return predict_tiled(
            predictor, image_chw, tile=infer.tile, overlap=infer.overlap,
            batch_size=infer.batch_size, stride=self.stride, blend=infer.blend,
        )

    def estimate_size(
        self, norm: np.ndarray, infer: InferConfig | None = None, post: PostprocessConfig | None = None,
    ) -> SizeFinding:
        """Estimate the median nucleus diameter of a normalised ``(H, W, C)`` image.

        With a size model (:mod:`nucleiseg.inference.size`) the network sees a few small views of
        the image; without one, the objects of a full pass at native resolution are measured.
        """
        infer = infer or self.config.infer
        post = post or self.config.postprocess
        plain = not infer.tta and list(infer.scales) == [1.0]
        if self.size_model is not None:
            est = estimate_size(norm, lambda chw: self._tiled(self.predictor, chw, infer), self.size_model)
            seen = bool((est.stats[:, 1] + est.stats[:, 2]).sum() > 0)
            return SizeFinding(est.diameter if seen else None, est.native if plain else None, None, "size_model")
        probs = self._probabilities(norm, infer)
        labels = probabilities_to_labels(probs, post)
        return SizeFinding(estimate_diameter(labels) if labels.any() else None, probs, labels, "first_pass")

    def segment(
        self,
        image: np.ndarray,
        infer: InferConfig | None = None,
        post: PostprocessConfig | None = None,
        keep_probabilities: bool = True,
    ) -> Result:
        """Segment one image array (``(H, W)`` gray or ``(H, W, 3|4)`` colour, any dtype).

        With ``infer.rescale`` (default) and no ``infer.diameter``, the typical nucleus diameter
        is estimated first (:meth:`estimate_size`, timed as the ``estimate`` stage); if it is
        farther than a factor ``infer.rescale_tolerance`` from the training scale
        (``infer.target_diameter``) the image is rescaled, segmented and the labels mapped back to
        the input's size. At native scale, probabilities the estimate already computed for the
        whole image are reused, never predicted twice. A given ``infer.diameter`` skips the
        estimate and is always honoured.
        """
        infer = infer or self.config.infer
        post = post or self.config.postprocess
        image = np.asarray(image)
        if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
            raise ValueError(f"expected a 2D gray or colour image, got shape {image.shape}")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.is_classical:
            labels = classical_segment(image, post)
            timings["total"] = time.perf_counter() - t0
            found = labels.any()
            return Result(labels, None, estimate_diameter(labels) if found else None, 1.0, timings, "labels" if found else None)

        norm = normalize_image(image, self.config.normalize)
        timings["normalize"] = time.perf_counter() - t0
        diameter = infer.diameter
        source: str | None = "given" if diameter is not None else None
        factor = 1.0
        found = SizeFinding(None, None, None, None)
        if diameter is None and infer.rescale:
            t = time.perf_counter()
            found = self.estimate_size(norm, infer, post)
            timings["estimate"] = time.perf_counter() - t
            diameter, source = found.diameter, (found.source if found.diameter is not None else None)
        if diameter is not None and infer.rescale and math.isfinite(diameter) and diameter > 0:
            factor = scale_factor(diameter, infer.target_diameter)
            if source != "given" and max(factor, 1 / factor) < infer.rescale_tolerance:
                factor = 1.0
        t = time.perf_counter()
        labels = None
        if factor == 1.0 and found.native is not None:  # the estimate's native pass, not predicted twice
            probs, labels = found.native, found.labels
        else:
            scaled = rescale_image(norm, factor) if factor != 1.0 else norm
            probs = self._probabilities(scaled, infer)
            if factor != 1.0:  # back to the input's size, then post-process with sizes in input pixels
                probs = resize_probabilities(probs, image.shape[:2])
                area = 1.0 / factor**2
                post = replace(
                    post, min_size=max(1, round(post.min_size * area)),
                    min_marker_size=max(1, round(post.min_marker_size * area)), diameter=post.diameter / factor,
                )
        if labels is None:
            labels = probabilities_to_labels(probs, post)
        timings["predict"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Result(labels, probs if keep_probabilities else None, diameter, factor, timings, source)
