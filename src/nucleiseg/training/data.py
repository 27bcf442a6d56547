"""Training data: a fixed validation split, in-memory samples and random augmented crops."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from nucleiseg.config import AugmentConfig, NormalizeConfig, TargetConfig
from nucleiseg.inference.scale import rescale_image, resize_labels, scale_factor
from nucleiseg.io.dsb import list_samples, load_sample
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.transforms import (
    build_augment,
    gap_weights,
    image_style_features,
    make_targets,
    normalize_image,
    style_clusters,
)


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split image ids into a fixed train and validation set.

    Each id is ranked by a SHA-1 hash of ``"<seed>:<id>"``, so the split depends only on the ids
    themselves and the seed: it is identical on every machine and does not shift when images are
    added to the folder. The lowest ``ceil(val_fraction * n)`` ranks form the validation set.

    Parameters
    ----------
    ids : sequence of str
        Image ids (DSB sample folder names).
    val_fraction : float
        Fraction in ``[0, 1)`` held out for validation.
    seed : int
        Split seed.

    Returns
    -------
    train, val : list of str
        Sorted id lists.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ranked = sorted(ids, key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    n_val = int(np.ceil(val_fraction * len(ranked))) if val_fraction > 0 else 0
    return sorted(ranked[n_val:]), sorted(ranked[:n_val])


@dataclass
class TrainingSample:
    """One normalised image (float16 to halve memory) with its instance labels."""

    id: str
    image: np.ndarray
    labels: np.ndarray


def load_samples(
    root: str | Path,
    ids: Sequence[str],
    normalize: NormalizeConfig,
    progress: bool = True,
    diameter: float | None = None,
) -> list[TrainingSample]:
    """Load and normalise DSB samples into memory (optionally at one canonical nucleus scale).

    Parameters
    ----------
    root : path
        DSB-layout folder.
    ids : sequence of str
        Sample ids to load.
    normalize : NormalizeConfig
        Normalisation applied once here, identical to inference.
    progress : bool
        Show a progress bar.
    diameter : float, optional
        Rescale each image (bilinear) and its labels (nearest) so that the median diameter of
        its ground-truth nuclei becomes this many pixels (zoom clamped to 0.25-4).
    """
    root = Path(root)
    out = []
    for sample_id in tqdm(ids, desc="loading", disable=not progress, leave=False):
        sample = load_sample(root / sample_id)
        image = normalize_image(sample.image, normalize)
        labels = sample.labels.astype(np.int32)
        if diameter is not None and labels.any():
            factor = scale_factor(estimate_diameter(labels), diameter)
            if factor != 1.0:
                image = rescale_image(image, factor)
                labels = resize_labels(labels, image.shape[:2])
        out.append(TrainingSample(sample_id, image.astype(np.float16), labels))
    return out


def available_ids(root: str | Path) -> list[str]:
    """Ids of all DSB samples under ``root``."""
    return [p.name for p in list_samples(root)]


class CropDataset(Dataset):
    """Random augmented crops with targets computed on the fly from the labels.

    Parameters
    ----------
    samples : list of TrainingSample
        Normalised images and labels.
    crop_size : int
        Side of the square training crops.
    targets : TargetConfig
        Target mode (binary or contour).
    augment : AugmentConfig
        Augmentation settings.
    length : int
        Number of crops per epoch.
    gap_weight : float
        Weight of separation pixels in the BCE pixel weights (0 disables).
    oversample : bool
        Sample images so that each image-style cluster is drawn equally often, which
        oversamples rare kinds (stained tissue, brightfield) over common fluorescence.
    seed : int
        Seed for image sampling and augmentation (each worker/epoch derives its own stream).
    """

    def __init__(
        self,
        samples: list[TrainingSample],
        crop_size: int,
        targets: TargetConfig,
        augment: AugmentConfig,
        length: int,
        gap_weight: float = 0.0,
        oversample: bool = True,
        seed: int = 0,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.samples = samples
        self.crop_size = crop_size
        self.targets = targets
        self.gap_weight = gap_weight
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.augment = build_augment(augment, crop_size, channels=samples[0].image.shape[-1])
        self.weights = sampling_weights(samples) if oversample else np.full(len(samples), 1 / len(samples))

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream so every epoch sees different crops, reproducibly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.samples[int(rng.choice(len(self.samples), p=self.weights))]
        self.augment.set_random_seed(int(rng.integers(2**31)))
        out = self.augment(image=sample.image.astype(np.float32), mask=sample.labels)
        image, labels = out["image"], out["mask"].astype(np.int32)
        target = make_targets(labels, self.targets)
        weight = (
            gap_weights(labels, self.targets, self.gap_weight)
            if self.gap_weight > 0
            else np.ones(labels.shape, np.float32)
        )
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            torch.from_numpy(target),
            torch.from_numpy(weight),
        )


def sampling_weights(samples: list[TrainingSample], n_clusters: int = 4) -> np.ndarray:
    """Per-image sampling probabilities that give every image-style cluster equal weight."""
    if len(samples) < n_clusters * 2:
        return np.full(len(samples), 1 / len(samples))
    features = np.stack([image_style_features(s.image.astype(np.float32)) for s in samples])
    clusters = style_clusters(features, n_clusters)
    counts = np.bincount(clusters, minlength=clusters.max() + 1).astype(np.float64)
    weights = 1.0 / counts[clusters]
    return weights / weights.sum()
