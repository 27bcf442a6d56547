"""Typed configuration for every stage of nucleiseg.

All settings live in dataclasses that serialise to plain JSON (and YAML for training recipes).
A trained model is described by a :class:`ModelBundleConfig` saved as ``config.json`` beside its
``weights.safetensors``; nothing is ever read from module-level globals.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from typing import Any

from nucleiseg.config_io import from_dict, load_json, save_json, to_dict

__all__ = [
    "AugmentConfig", "ExtraDataConfig", "InferConfig", "LossConfig", "ModelBundleConfig",
    "ModelConfig", "NormalizeConfig", "PostprocessConfig", "TargetConfig", "TrainConfig",
    "from_dict", "load_json", "save_json", "to_dict",
]


@dataclass
class NormalizeConfig:
    """Intensity normalisation, identical in training and inference.

    Parameters
    ----------
    mode : {"percentile", "minmax", "none"}
        ``percentile`` maps the ``low``..``high`` percentiles of the whole image to 0..1.
    low, high : float
        Percentiles used by ``mode="percentile"``.
    grayscale : bool
        Convert to one gray channel first (the seed work's normalisation).
    invert_bright : bool
        Invert images whose background is brighter than the nuclei (brightfield, stained tissue).
    channels : int
        Number of channels handed to the network (gray is replicated, RGB averaged, as needed).
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    grayscale: bool = False
    invert_bright: bool = False
    channels: int = 3


@dataclass
class TargetConfig:
    """How instance label images become training targets.

    ``binary`` gives one channel (foreground). ``contour`` gives three: foreground, the nucleus
    contour (inner boundary of each instance, ``contour_width`` pixels) and the separation zone
    (background pixels within ``separation_width`` of two different nuclei).
    """

    mode: str = "contour"
    contour_width: int = 2
    separation_width: int = 3

    @property
    def channels(self) -> int:
        """Number of target channels the mode produces."""
        return {"binary": 1, "contour": 3}[self.mode]


@dataclass
class ModelConfig:
    """Architecture name plus its keyword arguments for :func:`nucleiseg.models.create_model`."""

    arch: str = "unet"
    in_channels: int = 3
    out_channels: int = 3
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PostprocessConfig:
    """Turning probabilities into instance labels.

    Parameters
    ----------
    threshold : float
        Foreground probability threshold (``threshold_method="fixed"``).
    threshold_method : {"fixed", "otsu"}
        Fixed value or Otsu's threshold on the foreground probability.
    marker_threshold : float
        Contour models: markers are ``fg * (1 - contour) * (1 - separation) > marker_threshold``.
    min_size : int
        Objects smaller than this many pixels are removed.
    min_marker_size : int
        Markers smaller than this are discarded before the watershed.
    fill_holes : bool
        Fill holes in the foreground mask.
    marker_distance : float
        Binary models: minimum distance between distance-transform peaks, as a fraction of the
        typical nucleus diameter (``diameter``).
    diameter : float
        Typical nucleus diameter in pixels, for distance-transform markers.
    min_confidence : float
        Objects whose mean foreground probability is below this are removed (0: keep all).
        Faint fragments in stroma and debris are the typical false positives it removes.
    """

    threshold: float = 0.5
    threshold_method: str = "fixed"
    marker_threshold: float = 0.5
    min_size: int = 10
    min_marker_size: int = 4
    fill_holes: bool = True
    marker_distance: float = 0.35
    diameter: float = 18.0
    min_confidence: float = 0.0

    def overridden(self, threshold: float | None = None, min_size: int | None = None,
                   min_confidence: float | None = None) -> PostprocessConfig:
        """A copy with the values a user gave (None keeps this config's)."""
        given = {"threshold": threshold, "min_size": min_size, "min_confidence": min_confidence}
        return replace(self, **{k: v for k, v in given.items() if v is not None})


@dataclass
class AugmentConfig:
    """Paired image/label augmentation (albumentations); probabilities per transform.

    The fields after ``invert_p`` were added for the wider default model (issue 15). Their
    defaults leave the transforms out, so older recipes build exactly the pipeline (and draw
    exactly the crops) they did before:

    * ``hed_p``: stain variation in HED colour-deconvolution space (``hed_scale``: multiplicative
      jitter of each stain, ``hed_shift``: additive jitter in optical density), applied only to
      crops with a bright background (stained tissue, brightfield);
    * ``jpeg_p``: JPEG compression artefacts, quality ``jpeg_quality_min``..95;
    * ``downscale_p``: down- and up-sampling (a low-resolution camera), factor
      ``downscale_min``..0.9; back up with Lanczos instead of bilinear interpolation when
      ``downscale_lanczos`` (as the segmenter enlarges small nuclei, :mod:`nucleiseg.inference.scale`);
    * ``tissue_p``: synthetic H&E rendering of fluorescence crops
      (:class:`nucleiseg.transforms.tissue.TissueSynth`): nuclei in stained stroma, same labels.

    Scale jitter is ``scale_min``..``scale_max`` (with ``affine_p``); inversion of bright-field
    contrast is ``invert_p`` (normalisation does not invert unless ``invert_bright``).
    """

    flips: bool = True
    rotate90: bool = True
    scale_min: float = 0.6
    scale_max: float = 1.6
    rotate_limit: float = 30.0
    shear: float = 8.0
    affine_p: float = 0.5
    elastic_p: float = 0.1
    grid_distortion_p: float = 0.1
    brightness_contrast_p: float = 0.5
    gamma_p: float = 0.3
    hue_p: float = 0.3
    blur_p: float = 0.1
    noise_p: float = 0.15
    grayscale_p: float = 0.1
    invert_p: float = 0.2
    hed_p: float = 0.0
    hed_scale: float = 0.15
    hed_shift: float = 0.05
    jpeg_p: float = 0.0
    jpeg_quality_min: int = 30
    downscale_p: float = 0.0
    downscale_min: float = 0.5
    tissue_p: float = 0.0
    downscale_lanczos: bool = False


@dataclass
class ExtraDataConfig:
    """A folder of images with label images added to a recipe's training set.

    Parameters
    ----------
    path : str
        Any layout :func:`nucleiseg.io.discover_inputs` reads (``images/`` + ``masks/``, Cellpose
        pairs, DSB); relative paths are taken from the working directory (the repo root), like
        ``TrainConfig.data``. Images without ground truth are skipped.
    exclude : list of str
        Images never to load: names of committed held-out lists in :mod:`nucleiseg.io.splits`
        (``bbbc039_heldout``) or paths of text files with one image name (file stem) per line.
        Every committed held-out list is excluded from every extra folder whatever this says.
    name : str
        Prefix of the sample ids (``<name>/<id>``) in ``split.json``; defaults to the folder name.
    limit_images : int, optional
        Use only the first N images left after the exclusion (rehearsals).
    """

    SHORTHAND: typing.ClassVar[str] = "path"  # a bare string in a recipe is the path

    path: str = ""
    exclude: list[str] = field(default_factory=list)
    name: str = ""
    limit_images: int | None = None


@dataclass
class LossConfig:
    """Weighted sum of pixel losses, per target channel.

    ``channel_weights`` scales each target channel; ``gap_weight`` multiplies BCE pixel weights
    in the separation zone between touching nuclei (0 disables pixel weights). ``distill`` adds,
    per channel and with the same channel weights, the BCE between the network and a teacher
    model's probabilities (knowledge distillation; needs :attr:`TrainConfig.teacher`).
    """

    bce: float = 1.0
    dice: float = 1.0
    jaccard: float = 0.0
    focal: float = 0.0
    focal_gamma: float = 2.0
    channel_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.5])
    gap_weight: float = 5.0
    distill: float = 0.0


@dataclass
class TrainConfig:
    """A full training recipe: data, model, targets, loss, optimisation and bookkeeping.

    ``train_diameter`` (pixels) trains at one canonical scale: every training and validation
    image is rescaled so that the median diameter of its ground-truth nuclei becomes this value
    (augmentation still zooms around it); the saved inference config then always rescales
    images to it (``target_diameter``, ``rescale_tolerance`` 1.1). None trains at native scale.

    ``amp`` picks mixed precision for the forward pass: ``"auto"`` uses bfloat16 autocast on
    CUDA and on CPUs with native bfloat16 support (AVX512-BF16 or AMX; 1.5-2x faster steps
    here, ``docs/models.md``), ``"bf16"`` forces it, ``"off"`` trains in float32. Weights, optimizer
    state and the loss stay float32 either way.

    ``extra_data`` adds label-image folders (:class:`ExtraDataConfig`; a bare string is a path)
    to the training images of ``data``; validation stays on ``data``'s validation split. With
    ``oversample``, images are drawn so that every image-style cluster of the combined set is
    drawn equally often, so a large extra set of one kind does not crowd out the rare kinds.

    ``init_weights`` starts training from trained weights instead of a random initialisation
    (fine-tuning): a bundled model name (``"default"``), a run folder or a ``.safetensors``
    file whose tensors fit ``model`` exactly. ``--resume`` takes precedence over it.

    ``rescale_tolerance`` is written into the run's ``config.json`` as
    ``infer.rescale_tolerance`` (None: :class:`InferConfig`'s default): how far from the
    training size an estimated nucleus diameter may be before the image is zoomed.

    ``workers`` sets the processes that make augmented crops (the DataLoader's workers) and
    the threads that load the images; 0 does both in the training process. On a GPU the crops,
    not the network, limit the speed (about 10 ms per 192-pixel crop on one core). Every crop
    is drawn from a random stream keyed on (seed, epoch, index), so the crops do not depend on
    it.

    ``average_from`` (a fraction of the run: of ``max_minutes`` when set, else of ``epochs``)
    turns on weight averaging (:mod:`nucleiseg.training.averaging`): the weights at the end of
    every later epoch join an equal-weight mean, which becomes ``weights.safetensors`` at the end
    (batch-norm statistics recomputed on ``average_bn_batches`` training batches); the best
    single epoch is kept as ``best.safetensors``. None (default) keeps the best epoch.

    ``teacher`` (a bundled model name or a model folder) turns on knowledge distillation: its
    probabilities at native scale on every training image (:mod:`nucleiseg.training.distill`,
    computed once when training starts) are transformed with the crops and become soft targets,
    weighted by ``loss.distill``; the teacher must normalise images as ``normalize`` does.
    """

    data: str = "../shared/data/dsb2018/stage1_train"
    out: str = "runs/unet"
    val_fraction: float = 0.1
    split_seed: int = 2018
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    crop_size: int = 256
    batch_size: int = 8
    epochs: int = 50
    steps_per_epoch: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    patience: int = 10
    max_minutes: float | None = None
    val_max_images: int | None = None
    threads: int | None = None
    workers: int = 0
    limit_images: int | None = None
    oversample: bool = True
    train_diameter: float | None = None
    amp: str = "auto"
    extra_data: list[ExtraDataConfig] = field(default_factory=list)
    init_weights: str | None = None
    rescale_tolerance: float | None = None
    average_from: float | None = None
    average_bn_batches: int = 50
    teacher: str | None = None

    def __post_init__(self) -> None:
        if (self.teacher is None) != (self.loss.distill == 0) or self.loss.distill < 0:
            raise ValueError(f"a teacher needs loss.distill > 0 and loss.distill needs a teacher, "
                             f"got teacher {self.teacher!r}, loss.distill {self.loss.distill}")
        if self.average_from is not None and not 0.0 <= self.average_from < 1.0:
            raise ValueError(f"average_from must be in [0, 1), got {self.average_from}")
        self.extra_data = [
            e if isinstance(e, ExtraDataConfig)
            else ExtraDataConfig(path=e) if isinstance(e, str)
            else from_dict(ExtraDataConfig, e)
            for e in (self.extra_data or [])
        ]


@dataclass
class InferConfig:
    """Sliding-window prediction, test-time augmentation and scale settings.

    With ``rescale``, a first pass estimates the median nucleus diameter; when it differs from
    ``target_diameter`` by more than a factor ``rescale_tolerance`` the image is rescaled so
    nuclei measure ``target_diameter`` pixels and segmented again (``diameter`` skips the
    estimate). The default tolerance 1.5 (was 1.3) was picked on the DSB validation split: it
    rescales 28 of its 67 images instead of 44, scores higher there (0.5528 vs 0.5480) and runs
    the default command 1.3x faster; the zoomed rows of the accuracy suite did not drop.

    The zoom is clamped to ``min_zoom .. max_zoom``. ``min_zoom`` 1/8 instead of 1/4 brings
    nuclei of up to ~300 px within twice the training size and scored higher on validation
    images enlarged x6 .. x12 (``benchmarks/large_nuclei.py``), but lower on the accuracy
    suite (a few images of 80-100 px nuclei scored lower shrunk to 18 px than to 21-24 px; a
    false nucleus on an empty image), so 1/4 stays the default (docs/size_estimation.md,
    "Large nuclei").

    Images of more than ``block_pixels`` pixels are segmented block by block in ``block``-pixel
    tiles when their probabilities are not asked for (``nucleiseg segment`` and the web app), so
    memory stays near the image itself (docs/memory.md); 0 never does.
    """

    tile: int = 1024
    overlap: float = 0.25
    batch_size: int = 4
    blend: str = "gaussian"
    tta: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    rescale: bool = True
    diameter: float | None = None
    target_diameter: float = 18.0
    rescale_tolerance: float = 1.5
    min_zoom: float = 0.25
    max_zoom: float = 4.0
    block_pixels: int = 4_194_304
    block: int = 1536


@dataclass
class ModelBundleConfig:
    """Everything needed to rebuild and run a trained model; saved as ``config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    name: str = "model"
    version: str = ""
