"""Training data: a fixed validation split, in-memory samples and random augmented crops.

Training images come from the recipe's DSB folder (minus its validation split) and, optionally,
from extra label-image folders (:class:`~nucleiseg.config.ExtraDataConfig`). Images on a
committed held-out list (:mod:`nucleiseg.io.splits`) and data sets that are for measuring only
are never loaded here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from nucleiseg.config import AugmentConfig, ExtraDataConfig, NormalizeConfig, TargetConfig
from nucleiseg.inference.scale import rescale_image, resize_labels, scale_factor
from nucleiseg.io.dsb import list_samples, load_sample
from nucleiseg.io.images import read_image
from nucleiseg.io.labels import discover_inputs, load_item_gt
from nucleiseg.io.splits import bbbc039_heldout
from nucleiseg.postprocess import estimate_diameter
from nucleiseg.training.sampling import sample_style_clusters, weights_from_clusters
from nucleiseg.transforms import build_augment, gap_weights, make_targets, normalize_image


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
    """One normalised image (float16 to halve memory) with its instance labels.

    ``teacher``, when set (:func:`nucleiseg.training.distill.add_teacher_probabilities`), holds a
    teacher model's ``(K, H, W)`` float16 probabilities of the image, soft targets for distillation.
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    teacher: np.ndarray | None = None


def _prepare(
    sample_id: str, image: np.ndarray, labels: np.ndarray, normalize: NormalizeConfig, diameter: float | None
) -> TrainingSample:
    """Normalise one raw image (and optionally bring it to the canonical nucleus scale)."""
    image = normalize_image(image, normalize)
    labels = labels.astype(np.int32)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"{sample_id}: image {image.shape[:2]} and labels {labels.shape} differ in size")
    if diameter is not None and labels.any():
        factor = scale_factor(estimate_diameter(labels), diameter)
        if factor != 1.0:
            image = rescale_image(image, factor)
            labels = resize_labels(labels, image.shape[:2])
    return TrainingSample(sample_id, image.astype(np.float16), labels)


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, on ``workers`` threads when ``workers > 1``.

    Image decoding and the numpy work of normalisation release the GIL, so threads load a data
    set several times faster on a many-core machine; the results are the same as in one thread.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


def load_samples(
    root: str | Path,
    ids: Sequence[str],
    normalize: NormalizeConfig,
    progress: bool = True,
    diameter: float | None = None,
    workers: int = 0,
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
    workers : int
        Threads that read and normalise images (0 or 1: this thread); the result is the same.
    """
    root = Path(root)

    def one(sample_id: str) -> TrainingSample:
        sample = load_sample(root / sample_id)
        return _prepare(sample_id, sample.image, sample.labels, normalize, diameter)

    loaded = _ordered_map(one, ids, workers)
    return list(tqdm(loaded, total=len(ids), desc="loading", disable=not progress, leave=False))


#: Committed held-out lists by name. Every one is excluded from every extra training folder.
HELDOUT_LISTS: dict[str, Callable[[], list[str]]] = {"bbbc039_heldout": bbbc039_heldout}

#: Data sets whose licence or role allows measuring only: a training folder whose path names one
#: of these is refused (MoNuSeg's test set is non-commercial and held out for measuring).
MEASURING_ONLY = ("monuseg",)


def excluded_names(exclude: Sequence[str]) -> set[str]:
    """Image names (file stems) never to train on: every committed held-out list plus ``exclude``.

    Parameters
    ----------
    exclude : sequence of str
        Names of lists in :data:`HELDOUT_LISTS` or paths of text files with one image name per
        line (``#`` starts a comment line).

    Raises
    ------
    ValueError
        An entry that is neither a known list name nor an existing file.
    """
    names: set[str] = set()
    for fn in HELDOUT_LISTS.values():
        names.update(fn())
    for entry in exclude:
        if entry in HELDOUT_LISTS:
            continue
        path = Path(entry)
        if not path.is_file():
            raise ValueError(
                f"exclude entry {entry!r} is neither a held-out list ({', '.join(sorted(HELDOUT_LISTS))}) nor a file"
            )
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        names.update(line for line in lines if line and not line.startswith("#"))
    return names


def _check_trainable(path: Path) -> None:
    """Refuse folders of measuring-only data sets before anything in them is read."""
    parts = [part.lower() for part in path.resolve().parts]
    for name in MEASURING_ONLY:
        if any(name in part for part in parts):
            raise ValueError(f"{path}: {name} data is for measuring only and is never loaded for training")


def load_extra_samples(
    extra: ExtraDataConfig,
    normalize: NormalizeConfig,
    progress: bool = True,
    diameter: float | None = None,
    workers: int = 0,
) -> tuple[list[TrainingSample], dict[str, Any]]:
    """Load the training images of an extra label-image folder.

    Images are found with :func:`nucleiseg.io.discover_inputs` and read with
    :func:`~nucleiseg.io.read_image` / :func:`~nucleiseg.io.load_item_gt`. Images named on a
    held-out list (:func:`excluded_names`, matched by file stem or id) and images without
    ground truth are dropped *before* anything is read; then the first ``extra.limit_images``
    are kept. Normalisation, ``diameter`` and ``workers`` are as in :func:`load_samples`.

    Returns
    -------
    samples : list of TrainingSample
        Ids are ``"<name>/<id>"`` (``name`` defaults to the folder name).
    record : dict
        ``name``, ``path``, ``used`` (ids loaded), ``excluded`` (held-out ids found in the folder)
        and ``no_labels`` (ids without ground truth), for ``split.json``.

    Raises
    ------
    ValueError
        A measuring-only folder, a bad ``exclude`` entry, or no usable image.
    """
    root = Path(extra.path)
    _check_trainable(root)
    held = excluded_names(extra.exclude)
    name = extra.name or root.resolve().name
    used, excluded, no_labels = [], [], []
    for item in discover_inputs(root):
        if item.image_path.stem in held or item.id in held:
            excluded.append(item.id)
        elif item.gt_kind is None:
            no_labels.append(item.id)
        else:
            used.append(item)
    if extra.limit_images is not None:
        used = used[: extra.limit_images]
    if not used:
        raise ValueError(f"{root}: no images with ground truth left to train on")

    def one(item: Any) -> TrainingSample:
        labels = load_item_gt(item)
        assert labels is not None  # gt_kind was checked above
        return _prepare(f"{name}/{item.id}", read_image(item.image_path), labels, normalize, diameter)

    loaded = _ordered_map(one, used, workers)
    samples = list(tqdm(loaded, total=len(used), desc=f"loading {name}", disable=not progress, leave=False))
    record = {
        "name": name,
        "path": extra.path,
        "used": [s.id for s in samples],
        "excluded": excluded,
        "no_labels": no_labels,
    }
    return samples, record


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
        Sample images so that each image-style cluster
        (:func:`~nucleiseg.training.sampling.sample_style_clusters`, on all samples together) is
        drawn equally often, which oversamples rare kinds (stained tissue, brightfield) over
        common fluorescence, however many images an extra data set adds.
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
        n_clusters = 4
        if oversample and len(samples) >= n_clusters * 2:
            self.clusters = sample_style_clusters(samples, n_clusters)
            self.weights = weights_from_clusters(self.clusters)
        else:
            self.clusters = np.zeros(len(samples), dtype=np.int64)
            self.weights = np.full(len(samples), 1 / len(samples))

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream so every epoch sees different crops, reproducibly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.samples[int(rng.choice(len(self.samples), p=self.weights))]
        self.augment.set_random_seed(int(rng.integers(2**31)))
        extra = {} if sample.teacher is None else {"masks": list(sample.teacher.astype(np.float32))}
        out = self.augment(image=sample.image.astype(np.float32), mask=sample.labels, **extra)
        image, labels = out["image"], out["mask"].astype(np.int32)
        target = make_targets(labels, self.targets)
        if sample.teacher is not None:  # the teacher's probabilities follow the truth's channels
            target = np.concatenate([target, np.stack(out["masks"]).astype(target.dtype)])
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


def crop_loader(
    dataset: CropDataset, batch_size: int, workers: int = 0, pin_memory: bool = False, timeout: float = 0
) -> DataLoader:
    """Batches of ``dataset`` in index order, made by ``workers`` forked processes (0: in this one).

    ``timeout`` (seconds, workers only; 0: none) turns a stuck worker into an error.

    With workers, OpenCV is first set to one thread in this process: its thread pool does not
    survive a fork, and a worker forked while the pool was running hangs at its first OpenCV call
    (seen in the test suite after other tests had used OpenCV). The workers are the parallelism.
    """
    if workers:
        import cv2

        cv2.setNumThreads(1)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=True, pin_memory=pin_memory,
        timeout=timeout if workers else 0,
    )
