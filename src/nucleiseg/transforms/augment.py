"""Paired image/label augmentation built on albumentations, and overlapping patch extraction.

The pipeline works on normalised float32 ``(H, W, C)`` images in 0..1 (see
:func:`nucleiseg.transforms.normalize_image`) and int32 label images. Geometric transforms use
nearest-neighbour interpolation for the mask and fill new borders with 0 in both image and mask,
so label ids stay exact and are never duplicated (reflection padding would copy ids).
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from nucleiseg.config import AugmentConfig
from nucleiseg.transforms.tissue import TissueSynth

# Amplitudes of the individual transforms (probabilities come from AugmentConfig).
_ELASTIC = {"alpha": 120.0, "sigma": 10.0}
_GRID_LIMIT = 0.2
_BRIGHTNESS = 0.2
_CONTRAST = 0.25
_GAMMA = (70.0, 150.0)
_HSV = {"hue_shift_limit": 15, "sat_shift_limit": 25, "val_shift_limit": 15}
_BLUR_SIGMA = (0.3, 1.5)
_NOISE_STD = (0.005, 0.04)
_JPEG_QUALITY_MAX = 95
_DOWNSCALE_MAX = 0.9
_OD_EPS = 1e-3  # darkest transmitted intensity in the HED jitter (optical density <= 6.9)
_BORDER = {"border_mode": 0, "fill": 0, "fill_mask": 0}  # cv2.BORDER_CONSTANT with zeros


class HEDJitter(A.ImageOnlyTransform):
    """Stain variation for H&E-like images by jittering their HED colour deconvolution.

    The image's optical density ``-ln(I)`` is split into haematoxylin, eosin and DAB amounts with
    scikit-image's Ruifrok-Johnston matrices (``skimage.color.hed_from_rgb``); each amount is
    scaled by a factor drawn from ``1 ± scale`` and shifted by an optical density drawn from
    ``± shift``, and the image rebuilt (``rgb_from_hed``) and clipped to 0..1 (Tellez et al.
    2018, "HED jitter"). Unlike ``skimage.color.rgb2hed`` nothing is clipped in between, so a
    zero jitter returns the image unchanged (but for values below 1e-3, which become 1e-3).
    albumentations' ``HEStain`` projects onto two stains and so alters every image even without
    jitter.

    With ``bright_only`` (the default) crops whose mean intensity is below 0.5, i.e. fluorescence
    on a dark background, where stain variation means nothing, are returned unchanged. Images
    that are not 3-channel are returned unchanged.

    Works on float32 images in 0..1 (the normalised network input).
    """

    def __init__(self, scale: float = 0.15, shift: float = 0.05, bright_only: bool = True, p: float = 0.5) -> None:
        super().__init__(p=p)
        if scale < 0 or shift < 0:
            raise ValueError(f"hed_scale and hed_shift must be >= 0, got {scale}, {shift}")
        self.scale, self.shift, self.bright_only = float(scale), float(shift), bool(bright_only)

    def get_params(self) -> dict[str, Any]:
        """Draw one scale factor and one shift per stain."""
        return {
            "factors": self.random_generator.uniform(1.0 - self.scale, 1.0 + self.scale, 3).astype(np.float32),
            "shifts": self.random_generator.uniform(-self.shift, self.shift, 3).astype(np.float32),
        }

    def apply(self, img: np.ndarray, factors: np.ndarray, shifts: np.ndarray, **params: Any) -> np.ndarray:
        """Jitter the stains of ``img`` (float32 ``(H, W, 3)`` in 0..1)."""
        if img.ndim != 3 or img.shape[2] != 3 or (self.bright_only and float(img.mean()) < 0.5):
            return img
        od = -np.log(np.maximum(img.astype(np.float32), np.float32(_OD_EPS)))
        stains = od.reshape(-1, 3) @ hed_from_rgb.astype(np.float32)
        stains = stains * factors + shifts
        out = np.exp(-(stains @ rgb_from_hed.astype(np.float32))).reshape(img.shape)
        return np.clip(out, 0.0, 1.0).astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift", "bright_only")


def _probabilities(cfg: AugmentConfig) -> dict[str, float]:
    """All transform probabilities of ``cfg`` by field name."""
    return {
        "affine_p": cfg.affine_p,
        "elastic_p": cfg.elastic_p,
        "grid_distortion_p": cfg.grid_distortion_p,
        "brightness_contrast_p": cfg.brightness_contrast_p,
        "gamma_p": cfg.gamma_p,
        "hue_p": cfg.hue_p,
        "blur_p": cfg.blur_p,
        "noise_p": cfg.noise_p,
        "grayscale_p": cfg.grayscale_p,
        "invert_p": cfg.invert_p,
        "hed_p": cfg.hed_p,
        "jpeg_p": cfg.jpeg_p,
        "downscale_p": cfg.downscale_p,
        "tissue_p": cfg.tissue_p,
    }


def _validate(cfg: AugmentConfig, crop_size: int, channels: int, nonempty_p: float) -> None:
    """Raise ValueError on settings albumentations would reject with a less clear message."""
    if not isinstance(crop_size, int | np.integer) or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    for name, p in {**_probabilities(cfg), "nonempty_p": nonempty_p}.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if not 0.0 < cfg.scale_min <= cfg.scale_max:
        raise ValueError(f"need 0 < scale_min <= scale_max, got {cfg.scale_min}, {cfg.scale_max}")
    if cfg.rotate_limit < 0 or cfg.shear < 0:
        raise ValueError(f"rotate_limit and shear must be >= 0, got {cfg.rotate_limit}, {cfg.shear}")
    if cfg.hed_scale < 0 or cfg.hed_shift < 0:
        raise ValueError(f"hed_scale and hed_shift must be >= 0, got {cfg.hed_scale}, {cfg.hed_shift}")
    if not 1 <= cfg.jpeg_quality_min <= _JPEG_QUALITY_MAX:
        raise ValueError(f"jpeg_quality_min must be in 1..{_JPEG_QUALITY_MAX}, got {cfg.jpeg_quality_min}")
    if not 0.0 < cfg.downscale_min <= _DOWNSCALE_MAX:
        raise ValueError(f"downscale_min must be in (0, {_DOWNSCALE_MAX}], got {cfg.downscale_min}")


def _crop(crop_size: int, nonempty_p: float) -> A.BasicTransform:
    """Random ``crop_size`` crop that contains nucleus pixels with probability ``nonempty_p``."""
    nonempty = A.CropNonEmptyMaskIfExists(height=crop_size, width=crop_size)
    anywhere = A.RandomCrop(height=crop_size, width=crop_size)
    if nonempty_p >= 1.0:
        return nonempty
    if nonempty_p <= 0.0:
        return anywhere
    nonempty.p, anywhere.p = nonempty_p, 1.0 - nonempty_p
    return A.OneOf([nonempty, anywhere], p=1.0)


def build_augment(
    cfg: AugmentConfig,
    crop_size: int,
    channels: int = 3,
    seed: int | None = None,
    nonempty_p: float = 0.9,
) -> A.Compose:
    """Build the training augmentation pipeline.

    Order: zero-pad to at least ``crop_size``; ``Affine`` (isotropic scale
    ``cfg.scale_min..scale_max``, zooming in and out equally often; rotation ``±cfg.rotate_limit``;
    shear ``±cfg.shear``) on the whole image, so zooming out or rotating only shows borders where
    the real image ends; a ``crop_size`` crop that contains nuclei with probability
    ``nonempty_p``; flips and 90° rotations; elastic and grid distortion on the crop; then
    intensity transforms (synthetic H&E rendering of fluorescence crops, HED stain jitter of
    bright-background crops, brightness/contrast,
    gamma, hue/saturation, to-gray, inversion ``1 - x``, Gaussian blur, Gaussian noise); then
    acquisition artefacts (down/up-sampling, JPEG compression). Every probability comes from
    ``cfg``; a probability of 0 leaves the transform out (the transforms added later,
    ``hed_p``, ``jpeg_p``, ``downscale_p`` and ``tissue_p``, default to 0, so older recipes get the same
    pipeline and the same random crops as before).

    Parameters
    ----------
    cfg : AugmentConfig
        Transform probabilities and geometric ranges.
    crop_size : int
        Side of the square output.
    channels : int
        Image channels; hue/saturation and to-gray are only added for 3-channel images
        (albumentations warns on gray input).
    seed : int or None
        Seed of the returned ``Compose``: two pipelines built with the same seed produce the
        same sequence of outputs. None draws fresh entropy.
    nonempty_p : float
        Probability that the crop is centred on a random nucleus pixel rather than anywhere.

    Returns
    -------
    albumentations.Compose
        Call as ``aug(image=img_float32_hwc, mask=labels_int32)``; returns a dict with
        ``image`` float32 ``(crop_size, crop_size, C)`` and ``mask`` of the input dtype whose
        values are a subset of the input ids and 0.
    """
    _validate(cfg, crop_size, channels, nonempty_p)
    return A.Compose(_geometric(cfg, crop_size, nonempty_p) + _intensity(cfg, channels), seed=seed)


def _geometric(cfg: AugmentConfig, crop_size: int, nonempty_p: float) -> list[A.BasicTransform]:
    """Padding, the affine transform of the whole image, the crop, flips and rotations, distortions."""
    steps: list[A.BasicTransform] = [A.PadIfNeeded(min_height=crop_size, min_width=crop_size, **_BORDER)]
    if cfg.affine_p > 0:
        steps.append(
            A.Affine(
                scale=(cfg.scale_min, cfg.scale_max),
                rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                shear=(-cfg.shear, cfg.shear),
                keep_ratio=True,
                balanced_scale=cfg.scale_min < 1.0 < cfg.scale_max,
                p=cfg.affine_p,
                **_BORDER,
            )
        )
    steps.append(_crop(crop_size, nonempty_p))
    if cfg.flips:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.rotate90:
        steps.append(A.RandomRotate90(p=1.0))
    if cfg.elastic_p > 0:
        steps.append(A.ElasticTransform(**_ELASTIC, noise_distribution="uniform", p=cfg.elastic_p, **_BORDER))
    if cfg.grid_distortion_p > 0:
        steps.append(A.GridDistortion(distort_limit=_GRID_LIMIT, p=cfg.grid_distortion_p, **_BORDER))
    return steps


def _intensity(cfg: AugmentConfig, channels: int) -> list[A.BasicTransform]:
    """The intensity transforms and acquisition artefacts whose probability is above 0, in order.

    The colour transforms (synthetic H&E, HED jitter, hue/saturation, to-gray) only for 3 channels.
    """
    colour = channels == 3
    optional: list[tuple[float, A.BasicTransform]] = [
        (cfg.tissue_p if colour else 0.0, TissueSynth(p=cfg.tissue_p)),
        (
            cfg.hed_p if colour else 0.0,
            HEDJitter(cfg.hed_scale, cfg.hed_shift, p=cfg.hed_p),
        ),
        (
            cfg.brightness_contrast_p,
            A.RandomBrightnessContrast(_BRIGHTNESS, _CONTRAST, p=cfg.brightness_contrast_p),
        ),
        (cfg.gamma_p, A.RandomGamma(gamma_limit=_GAMMA, p=cfg.gamma_p)),
        (cfg.hue_p if colour else 0.0, A.HueSaturationValue(**_HSV, p=cfg.hue_p)),
        (cfg.grayscale_p if colour else 0.0, A.ToGray(num_output_channels=3, p=cfg.grayscale_p)),
        (cfg.invert_p, A.InvertImg(p=cfg.invert_p)),
        (cfg.blur_p, A.GaussianBlur(sigma_limit=_BLUR_SIGMA, p=cfg.blur_p)),
        (cfg.noise_p, A.GaussNoise(std_range=_NOISE_STD, p=cfg.noise_p)),
        (
            cfg.downscale_p,
            A.Downscale(
                scale_range=(cfg.downscale_min, _DOWNSCALE_MAX),
                interpolation_pair={"downscale": cv2.INTER_AREA,
                                    "upscale": cv2.INTER_LANCZOS4 if cfg.downscale_lanczos else cv2.INTER_LINEAR},
                p=cfg.downscale_p,
            ),
        ),
        (
            cfg.jpeg_p,
            A.ImageCompression(quality_range=(cfg.jpeg_quality_min, _JPEG_QUALITY_MAX), p=cfg.jpeg_p),
        ),
    ]
    return [t for p, t in optional if p > 0]


def patchify(
    image: np.ndarray, labels: np.ndarray, size: int, stride: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut an image and its labels into overlapping ``size`` x ``size`` patches.

    Patch origins step by ``stride`` and the last row/column of patches is aligned with the image
    edge, so every pixel is covered. Images smaller than ``size`` along a side are zero-padded
    (bottom/right) on that side. Patches are copies.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` or ``(H, W, C)`` image.
    labels : np.ndarray
        ``(H, W)`` label image.
    size : int
        Patch side (>= 1).
    stride : int
        Step between patch origins (1..size).

    Returns
    -------
    list of (np.ndarray, np.ndarray)
        ``(image_patch, label_patch)`` pairs in row-major order.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim != 2 or image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must share (H, W)")
    if size < 1 or not 1 <= stride <= size:
        raise ValueError(f"need size >= 1 and 1 <= stride <= size, got size={size}, stride={stride}")
    h, w = labels.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = np.pad(image, [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2))
        labels = np.pad(labels, [(0, ph), (0, pw)])
        h, w = labels.shape

    def origins(n: int) -> list[int]:
        steps = max(1, math.ceil((n - size) / stride) + 1)
        return sorted({min(i * stride, n - size) for i in range(steps)})

    return [
        (image[y : y + size, x : x + size].copy(), labels[y : y + size, x : x + size].copy())
        for y in origins(h)
        for x in origins(w)
    ]
