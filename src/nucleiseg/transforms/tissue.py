"""Synthetic H&E rendering of fluorescence crops: stained-tissue look-alikes with exact labels.

Stained tissue is rare in the training data (a few DSB images with clean white backgrounds), yet
users bring whole H&E sections, where nuclei sit in pink, textured stroma with lumens, red blood
cells and haematoxylin-tinted cytoplasm. :class:`TissueSynth` turns a fluorescence crop, whose
nuclei are bright on a dark background and whose labels are known, into such an image: the
fluorescence intensity becomes the nuclei's haematoxylin amount, random smooth fields become
eosin-stained stroma, faint haematoxylin background, white lumens and eosin-dense red blood
cells, and the stain amounts are turned into colour with Beer-Lambert's law and scikit-image's
Ruifrok-Johnston stain vectors (``skimage.color.rgb_from_hed``). The labels stay the same: only
the image changes (domain randomisation, as in synthetic-to-real work on histology).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from skimage.color import rgb_from_hed

from nucleiseg.transforms.normalize import stretch

# Ranges each rendering draws from (stain amounts are optical densities of one stain unit).
_NUCLEUS_H = (1.2, 3.0)  # haematoxylin of the brightest nucleus pixel
_CHROMATIN = (0.1, 0.4)  # relative amplitude of the chromatin texture inside nuclei
_STROMA_E = (0.15, 0.7)  # eosin of dense stroma
_STROMA_SIGMA = (1.5, 8.0)  # smoothing (px) of the stroma texture: fibres to broad patches
_BACKGROUND_H = (0.0, 0.35)  # haematoxylin tint of stroma and cytoplasm
_LUMEN_P = 0.5  # chance a rendering has white lumens
_RBC_COUNT = (0, 12)  # red blood cells per 192x192 crop
_RBC_RADIUS = (2.0, 5.0)
_RBC_E = (0.8, 2.0)
_DARK_MEAN = 0.5  # crops with a mean above this are already bright-background: left alone
_PERCENTILES = (1.0, 99.8)  # the inference normalisation's default percentiles


def _field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    std = float(field.std())
    return (field - float(field.mean())) / std if std > 1e-8 else field


def _disks(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: tuple[float, float]) -> np.ndarray:
    """Float mask (0..1, soft edges) of ``count`` random disks."""
    mask = np.zeros(shape, np.float32)
    for _ in range(count):
        centre = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        cv2.circle(mask, centre, int(round(rng.uniform(*radius))), 1.0, thickness=-1)
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=0.8) if count else mask


def render_tissue(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render a normalised fluorescence crop as a synthetic H&E image.

    Parameters
    ----------
    image : np.ndarray
        float32 ``(H, W, 3)`` in 0..1, nuclei bright on a dark background.
    rng : np.random.Generator
        Source of every random choice (the rendering is a pure function of image and state).

    Returns
    -------
    np.ndarray
        float32 ``(H, W, 3)`` in 0..1: dark purple nuclei where the input was bright, stained
        stroma elsewhere, stretched to the 1-99.8 percentiles as the inference normalisation does.
    """
    shape = image.shape[:2]
    signal = image.mean(axis=2)
    top = float(np.percentile(signal, 99.5))
    signal = np.clip(signal / top, 0.0, 1.0) if top > 1e-6 else np.zeros_like(signal)
    chromatin = 1.0 + rng.uniform(*_CHROMATIN) * _field(rng, shape, rng.uniform(0.7, 1.5))
    nuclei_h = rng.uniform(*_NUCLEUS_H) * signal * np.clip(chromatin, 0.3, None)
    fibres = np.clip(_field(rng, shape, rng.uniform(*_STROMA_SIGMA)) + rng.uniform(-0.5, 1.0), 0.0, None)
    stroma_e = rng.uniform(*_STROMA_E) * np.tanh(fibres) * (1.0 - 0.6 * signal)
    background_h = rng.uniform(*_BACKGROUND_H) * np.clip(0.6 + 0.4 * _field(rng, shape, rng.uniform(1.0, 4.0)), 0.0, None)
    tissue = np.ones(shape, np.float32)
    if rng.random() < _LUMEN_P:  # white spaces (lumens, fat, tears) where no stain is
        lumen = _field(rng, shape, rng.uniform(8.0, 20.0)) > rng.uniform(0.3, 1.5)
        tissue = np.where(lumen & (signal < 0.1), 0.0, 1.0).astype(np.float32)
        tissue = cv2.GaussianBlur(tissue, (0, 0), sigmaX=1.5)
    scale = (shape[0] * shape[1]) / 192.0**2
    rbc = _disks(rng, shape, int(rng.integers(_RBC_COUNT[0], _RBC_COUNT[1] + 1) * scale), _RBC_RADIUS)
    rbc *= (signal < 0.1).astype(np.float32)
    h_amount = nuclei_h + background_h * tissue * (1.0 - signal)
    e_amount = stroma_e * tissue + rng.uniform(*_RBC_E) * rbc
    stains = np.stack([h_amount, e_amount, np.zeros_like(h_amount)], axis=-1).astype(np.float32)
    od = stains.reshape(-1, 3) @ rgb_from_hed.astype(np.float32)
    rgb = np.exp(-od).reshape(*shape, 3)
    lo, hi = np.percentile(rgb, _PERCENTILES)
    return stretch(rgb.astype(np.float32), float(lo), float(hi))


class TissueSynth(A.ImageOnlyTransform):
    """Albumentations transform: :func:`render_tissue` on dark-background (fluorescence) crops.

    Crops whose mean is above 0.5 (already bright-background: tissue, brightfield) and images
    that are not 3-channel are returned unchanged.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__(p=p)

    def get_params(self) -> dict[str, Any]:
        """One seed per call, so the rendering follows the pipeline's seed."""
        return {"seed": int(self.random_generator.integers(0, 2**31 - 1))}

    def apply(self, img: np.ndarray, seed: int, **params: Any) -> np.ndarray:
        """Render ``img`` (float32 ``(H, W, 3)`` in 0..1) as synthetic H&E."""
        if img.ndim != 3 or img.shape[2] != 3 or float(img.mean()) > _DARK_MEAN:
            return img
        return render_tissue(img, np.random.default_rng(seed)).astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()
