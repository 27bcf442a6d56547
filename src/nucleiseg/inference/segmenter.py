"""The one Python API that the CLI, the web app and Dask all call: :class:`Segmenter`."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nucleiseg.bundle import CLASSICAL, ModelBundle, ModelSpec
from nucleiseg.config import InferConfig, ModelBundleConfig, PostprocessConfig, to_dict
from nucleiseg.inference.predictors import AUTO, BACKENDS, Predictor, build_predictor
from nucleiseg.inference.result import Result, SizeFinding
from nucleiseg.inference.scale import rescale_image, resize_probabilities, scale_factor
from nucleiseg.inference.size import SizeModel, estimate_size, objects_seen
from nucleiseg.inference.tiling import predict_tiled
from nucleiseg.inference.tta import multiscale_predictor, tta_predictor
from nucleiseg.postprocess.watershed import estimate_diameter, probabilities_to_labels
from nucleiseg.transforms.normalize import IntensityRange, normalize_image

__all__ = ["BACKENDS", "CLASSICAL", "Result", "Segmenter", "SizeFinding"]


class Segmenter:
    """Segment nuclei with a trained network (or the classical baseline).

    Use :meth:`from_pretrained` (a bundled name or a run folder), :meth:`from_spec` (a
    :class:`~nucleiseg.bundle.ModelSpec`, as worker processes do) or :meth:`from_bundle`.
    The pipeline's stages are methods: :meth:`normalize`, :meth:`estimate_size`,
    :meth:`probabilities` and :meth:`postprocess`; :meth:`segment` composes them and times each.
    Everything that segments (the CLI, the web app, the API, validation, benchmarks, the
    block-wise and Dask paths) calls these, so no stage exists twice.

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
    backend : str or None
        The backend that built ``predictor`` (None for a hand-made predictor).
    """

    def __init__(
        self,
        config: ModelBundleConfig,
        predictor: Predictor | None,
        stride: int = 32,
        name: str = CLASSICAL,
        model_hash: str = "",
        size_model: SizeModel | None = None,
        backend: str | None = None,
    ) -> None:
        self.config = config
        self.predictor = predictor
        self.stride = stride
        self.name = name
        self.model_hash = model_hash
        self.size_model = size_model
        self.backend = backend
        #: The :class:`~nucleiseg.bundle.ModelSpec` this segmenter was loaded from, so worker
        #: processes can load the same model (None for a hand-made segmenter).
        self.source: ModelSpec | None = None

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, backend: str = AUTO, device: str = "cpu", threads: int | None = None) -> Segmenter:
        """A segmenter for an opened model (see :func:`~nucleiseg.inference.predictors.build_predictor`)."""
        if bundle.is_classical:
            return cls(bundle.config, None)
        loaded = build_predictor(bundle, backend, device, threads)
        size_model = SizeModel.load(bundle.size_model) if bundle.size_model is not None else None
        return cls(bundle.config, loaded.predict, loaded.stride, loaded.name, loaded.model_hash, size_model, loaded.backend)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Segmenter:
        """Load the model a :class:`~nucleiseg.bundle.ModelSpec` names (what worker processes call)."""
        seg = cls.from_bundle(ModelBundle.open(spec.model), spec.backend, spec.device, spec.threads)
        seg.source = spec
        return seg

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = "default", device: str = "cpu", backend: str = AUTO, threads: int | None = None
    ) -> Segmenter:
        """Load ``"classical"``, a bundled model name, a run folder or an exported ``.onnx`` file.

        Parameters
        ----------
        name_or_path : str or Path
            ``"classical"``, a bundled name such as ``"default"``, a folder holding
            ``config.json`` and ``weights.safetensors``, or an ``.onnx`` file.
        device : str
            Torch device.
        backend : {"auto", "torch", "onnx", "onnx-fp16", "onnx-int8"}
            Inference engine: ``auto`` (default) runs the model's fastest form on the CPU (the
            folder's ``model.int8.onnx``, else ``model.onnx``, else PyTorch) and PyTorch on other
            devices; ``torch``; or ONNX Runtime on the CPU with the folder's ``model.onnx``,
            ``model.fp16.onnx`` or ``model.int8.onnx`` (``nucleiseg export``).
        threads : int, optional
            Intra-op threads of the network runtime (ONNX Runtime's session; PyTorch's, which is
            process-wide). Library default when None.
        """
        return cls.from_spec(ModelSpec.of(name_or_path, backend, device, threads))

    @property
    def is_classical(self) -> bool:
        """True for the network-free baseline."""
        return self.predictor is None

    def describe(self, infer: InferConfig | None = None, post: PostprocessConfig | None = None) -> dict[str, Any]:
        """Model name, hash, backend and the settings in force (for sidecars and the API)."""
        return {
            "model": self.name,
            "model_hash": self.model_hash,
            "arch": None if self.is_classical else self.config.model.arch,
            "backend": self.backend,
            "postprocess": to_dict(post or self.config.postprocess),
            "infer": to_dict(infer or self.config.infer),
        }

    # -- the stages -------------------------------------------------------------------------
    def normalize(self, image: np.ndarray, intensity: IntensityRange | None = None) -> np.ndarray:
        """Stage 1: the raw image as the network's float32 ``(H, W, C)`` input.

        ``intensity`` imposes an image-wide mapping (:func:`~nucleiseg.transforms.normalize.intensity_range`),
        as the block-wise path does for the tiles of one huge image. A gray image fed to a
        colour network comes back as a read-only view whose channels share one plane (4 bytes
        per pixel, not 12): every stage only reads it.
        """
        return normalize_image(image, self.config.normalize, intensity, share_channels=True)

    def probabilities(self, norm: np.ndarray, infer: InferConfig | None = None) -> np.ndarray:
        """Stage 3: tiled probabilities ``(K, H, W)`` of a normalised image, with the TTA and scales of ``infer``."""
        if self.predictor is None:
            raise ValueError("the classical model has no probabilities")
        infer = infer or self.config.infer
        predictor = self.predictor
        if infer.tta:
            predictor = tta_predictor(predictor)
        if len(infer.scales) > 1 or infer.scales[0] != 1.0:
            predictor = multiscale_predictor(predictor, infer.scales, self.stride)
        return self._tiled(predictor, norm.transpose(2, 0, 1), infer)

    def postprocess(self, probs: np.ndarray, post: PostprocessConfig | None = None) -> np.ndarray:
        """Stage 4: instance labels from probabilities (marker-controlled watershed)."""
        return probabilities_to_labels(probs, post or self.config.postprocess)

    def _tiled(self, predictor: Predictor, image_chw: np.ndarray, infer: InferConfig) -> np.ndarray:
        """``predict_tiled`` with the tiling settings of ``infer`` (the size probe calls it with the plain predictor)."""
        return predict_tiled(
            predictor, image_chw, tile=infer.tile, overlap=infer.overlap,
            batch_size=infer.batch_size, stride=self.stride, blend=infer.blend,
        )

    def estimate_size(
        self, norm: np.ndarray, infer: InferConfig | None = None, post: PostprocessConfig | None = None,
    ) -> SizeFinding:
        """Stage 2: the median nucleus diameter of a normalised ``(H, W, C)`` image.

        With a size model (:mod:`nucleiseg.inference.size`) the network sees a few small views of
        the image; without one, the objects of a full pass at native resolution are measured.
        """
        infer = infer or self.config.infer
        post = post or self.config.postprocess
        plain = not infer.tta and list(infer.scales) == [1.0]
        if self.size_model is not None:
            assert self.predictor is not None
            predictor = self.predictor
            est = estimate_size(norm, lambda chw: self._tiled(predictor, chw, infer), self.size_model)
            return SizeFinding(est.diameter if objects_seen(est.stats) else None, est.native if plain else None, None, "size_model", est.gated, est.centre)
        probs = self.probabilities(norm, infer)
        labels = self.postprocess(probs, post)
        return SizeFinding(estimate_diameter(labels) if labels.any() else None, probs, labels, "first_pass")

    def scale_for(self, diameter: float | None, source: str | None, infer: InferConfig) -> float:
        """The zoom an image with nuclei of ``diameter`` pixels is segmented at (1.0: native).

        A given diameter (``source == "given"``) is always honoured; an estimated one only when
        it is farther than ``infer.rescale_tolerance`` from the training scale.
        """
        if diameter is None or not infer.rescale or not math.isfinite(diameter) or diameter <= 0:
            return 1.0
        factor = scale_factor(diameter, infer.target_diameter, infer.min_zoom, infer.max_zoom)
        if source != "given" and max(factor, 1 / factor) < infer.rescale_tolerance:
            return 1.0
        return factor

    def segment(
        self,
        image: np.ndarray,
        infer: InferConfig | None = None,
        post: PostprocessConfig | None = None,
        keep_probabilities: bool = True,
        intensity: IntensityRange | None = None,
    ) -> Result:
        """Segment one image array (``(H, W)`` gray or ``(H, W, 3|4)`` colour, any dtype).

        Stages, each timed in ``Result.timings``: ``normalize``; ``estimate`` (with
        ``infer.rescale`` and no ``infer.diameter``: :meth:`estimate_size`); ``predict``
        (:meth:`probabilities`, at the zoom :meth:`scale_for` picks, then back to the input's
        size); ``postprocess`` (:meth:`postprocess`, sizes in input pixels). At native scale,
        probabilities the estimate already computed for the whole image are reused, never
        predicted twice. A given ``infer.diameter`` skips the estimate and is always honoured.

        Without ``keep_probabilities``, a network model segments an image of more than
        ``infer.block_pixels`` pixels block by block (:meth:`segment_blockwise`), in a fraction
        of the memory.
        """
        infer = infer or self.config.infer
        post = post or self.config.postprocess
        image = np.asarray(image)
        if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
            raise ValueError(f"expected a 2D gray or colour image, got shape {image.shape}")
        if self.goes_blockwise(image.shape, infer) and not keep_probabilities and intensity is None:
            return self.segment_blockwise(image, infer, post)
        t0 = time.perf_counter()
        if self.is_classical:
            return _classical_result(image, post, t0)
        timings: dict[str, float] = {}
        done = self._predict_stages(image, infer, post, intensity, timings, t0)
        t = time.perf_counter()
        labels = done.labels if done.labels is not None else self.postprocess(done.probs, done.post)
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Result(labels, done.probs if keep_probabilities else None, done.diameter, done.scale, timings, done.source, done.centre)

    def _predict_stages(
        self, image: np.ndarray, infer: InferConfig, post: PostprocessConfig, intensity: IntensityRange | None,
        timings: dict[str, float], t0: float,
    ) -> _Predicted:
        """Stages 1 to 3 of :meth:`segment` (normalise, estimate, predict), timed into ``timings``.

        The normalised image and the estimate's arrays are dropped as soon as they are of no use,
        so only the probabilities (and the estimate's labels, when reused) outlive this step.
        """
        norm = self.normalize(image, intensity)
        timings["normalize"] = time.perf_counter() - t0
        found, diameter, source = self._find_diameter(norm, infer, post, timings)
        factor = self.scale_for(diameter, source, infer)
        t = time.perf_counter()
        labels = None
        centre, native = found.centre, found.native if factor == 1.0 else None
        if native is not None:  # the estimate's native pass, not predicted twice
            probs, labels = native, found.labels
            del found, norm  # free what post-processing does not need
        else:
            del found  # its native probabilities (if any) are of no use at another scale
            probs = self.probabilities(_rescaled(norm, factor), infer)
            del norm
            if factor != 1.0:  # back to the input's size, then post-process with sizes in input pixels
                probs = resize_probabilities(probs, image.shape[:2])
                post = _in_input_pixels(post, factor)
        timings["predict"] = time.perf_counter() - t
        return _Predicted(probs, labels, post, diameter, source, factor, centre)

    def _find_diameter(
        self, norm: np.ndarray, infer: InferConfig, post: PostprocessConfig, timings: dict[str, float],
    ) -> tuple[SizeFinding, float | None, str | None]:
        """``(finding, diameter, source)``: the given diameter, else (with ``infer.rescale``) :meth:`estimate_size`'s."""
        diameter = infer.diameter or None  # 0 means "estimate it", as everywhere (native scale is rescale=False)
        source: str | None = "given" if diameter is not None else None
        found = SizeFinding(None, None, None, None)
        if diameter is None and infer.rescale:
            t = time.perf_counter()
            found = self.estimate_size(norm, infer, post)
            timings["estimate"] = time.perf_counter() - t
            diameter, source = found.diameter, (found.source if found.diameter is not None else None)
        return found, diameter, source

    def goes_blockwise(self, shape: tuple[int, ...], infer: InferConfig | None = None) -> bool:
        """True when :meth:`segment` (without probabilities) segments an image of ``shape`` block by block."""
        infer = infer or self.config.infer
        return not self.is_classical and 0 < infer.block_pixels < int(shape[0]) * int(shape[1])

    def segment_blockwise(self, image: np.ndarray, infer: InferConfig | None = None, post: PostprocessConfig | None = None) -> Result:
        """Segment one large image block by block in this process (:mod:`nucleiseg.distributed.stream`).

        The image is cut into ``infer.block`` tiles, each segmented with a margin and stitched
        without seams; the nucleus scale and the contrast are decided once for the whole image.
        Memory beyond the image and its int32 labels is one tile's plus three rows of tile
        labels. ``Result.probabilities`` is None; ``timings`` has ``blocks`` and ``total``.
        """
        from nucleiseg.distributed.stream import segment_in_blocks

        infer = infer or self.config.infer
        t0 = time.perf_counter()
        labels, plan = segment_in_blocks(self, np.asarray(image), infer, post or self.config.postprocess)
        return self.blockwise_result(labels, plan, infer, time.perf_counter() - t0)

    def blockwise_result(self, labels: np.ndarray, plan: Any, infer: InferConfig, seconds: float) -> Result:
        """The :class:`Result` of a block-wise run of ``plan`` (a :class:`~nucleiseg.distributed.blocks.BlockPlan`).

        ``timings`` holds ``blocks``, the seconds of the whole run.
        """
        source = None
        if plan.diameter is not None:
            source = "given" if infer.diameter is not None else "size_model" if self.size_model is not None else "first_pass"
        factor = self.scale_for(plan.infer.diameter, "given", plan.infer) if plan.infer is not None else 1.0
        return Result(labels, None, plan.diameter, factor, {"blocks": seconds, "total": seconds}, source,
                      getattr(plan, "probe_centre", None))


def _rescaled(norm: np.ndarray, factor: float) -> np.ndarray:
    """``norm`` zoomed by ``factor`` (itself at 1.0); channels sharing one plane are zoomed once and stay shared."""
    if factor == 1.0:
        return norm
    if norm.ndim == 3 and norm.shape[2] > 1 and norm.strides[2] == 0:
        plane = rescale_image(norm[:, :, :1], factor)
        return np.broadcast_to(plane, plane.shape[:2] + norm.shape[2:])
    return rescale_image(norm, factor)


class _Predicted(NamedTuple):
    """What :meth:`Segmenter._predict_stages` hands to post-processing."""

    probs: np.ndarray
    labels: np.ndarray | None  # the estimate's labels, when its native pass is reused
    post: PostprocessConfig  # sizes in input pixels
    diameter: float | None
    source: str | None
    scale: float
    centre: tuple[int, int] | None


def _classical_result(image: np.ndarray, post: PostprocessConfig, t0: float) -> Result:
    """:meth:`Segmenter.segment` with the classical model (no network), timed from ``t0``."""
    from nucleiseg.postprocess.classical import classical_segment

    timings: dict[str, float] = {}
    labels = classical_segment(image, post)
    timings["postprocess"] = timings["total"] = time.perf_counter() - t0
    found = labels.any()
    return Result(labels, None, estimate_diameter(labels) if found else None, 1.0, timings, "labels" if found else None)


def _in_input_pixels(post: PostprocessConfig, factor: float) -> PostprocessConfig:
    """``post`` for probabilities computed at zoom ``factor`` and resized back: its sizes in input pixels."""
    area = 1.0 / factor**2
    return replace(
        post, min_size=max(1, round(post.min_size * area)),
        min_marker_size=max(1, round(post.min_marker_size * area)), diameter=post.diameter / factor,
    )
