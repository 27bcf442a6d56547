"""Training data from any folder ``nucleiseg evaluate`` reads as ground truth.

A DSB-layout folder, ``images/`` + ``masks/``, Cellpose-style ``x.tif`` + ``x_masks.tif`` pairs,
other label-image pairs, or a single image with its label image: :func:`labelled_items` finds
the images that have ground truth, :func:`choose_split` picks the validation images (or, with
too few images to spare any, validates on the training images and says so) and
:func:`load_items` reads and normalises them like :func:`nucleiseg.training.data.load_samples`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nucleiseg.config import NormalizeConfig
from nucleiseg.io.images import read_image
from nucleiseg.io.labels import InputItem, discover_inputs, load_item_gt
from nucleiseg.training.data import TrainingSample, _check_trainable, _ordered_map, _prepare, split_ids

__all__ = ["MIN_TRAIN_IMAGES", "choose_split", "labelled_items", "load_items"]

#: A validation split is held out only when at least this many training images remain.
MIN_TRAIN_IMAGES = 4


def labelled_items(root: str | Path, allow_measuring_only: bool = False) -> list[InputItem]:
    """The images under ``root`` (a folder or one image file) that have ground truth.

    Parameters
    ----------
    root : path
        Any layout :func:`nucleiseg.io.discover_inputs` reads.
    allow_measuring_only : bool
        Let a measuring-only data set (MoNuSeg) through; only benchmarks that fine-tune on a
        committed part of it and score on the rest set this.

    Raises
    ------
    ValueError
        A measuring-only folder, or no image with ground truth.
    """
    root = Path(root)
    if not allow_measuring_only:
        _check_trainable(root)
    items = [item for item in discover_inputs(root) if item.gt_kind is not None]
    if not allow_measuring_only:  # also behind links: every image file's real place
        for item in items:
            _check_trainable(item.image_path)
    if not items:
        raise ValueError(
            f"{root}: no images with ground truth (expected a DSB layout, images/ + masks/, "
            "x.tif + x_masks.tif pairs, or an image with its _masks label image)"
        )
    return items


def choose_split(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str], bool]:
    """Training and validation ids, and whether validation is on the training images.

    The validation ids are :func:`~nucleiseg.training.data.split_ids`'s when that leaves at
    least :data:`MIN_TRAIN_IMAGES` training images and ``val_fraction > 0``; otherwise every
    image trains and the validation (checkpoint choice, threshold tuning) scores the training
    images themselves, which the third value reports.
    """
    train, val = split_ids(ids, val_fraction, seed)
    if val and len(train) >= MIN_TRAIN_IMAGES:
        return train, val, False
    everything = sorted(ids)
    return everything, everything, True


def load_items(
    items: Sequence[InputItem],
    normalize: NormalizeConfig,
    progress: bool = True,
    diameter: float | None = None,
    workers: int = 0,
) -> list[TrainingSample]:
    """Read and normalise labelled items into training samples (ids are the items' ids)."""
    from tqdm import tqdm

    def one(item: InputItem) -> TrainingSample:
        labels = load_item_gt(item)
        if labels is None:
            raise ValueError(f"{item.image_path}: no ground truth")
        return _prepare(item.id, read_image(item.image_path), labels, normalize, diameter)

    loaded = _ordered_map(one, items, workers)
    return list(tqdm(loaded, total=len(items), desc="loading", disable=not progress, leave=False))


class TrainingSplit:
    """The images of a recipe's ``data`` folder, split into training and validation ids.

    Attributes
    ----------
    root : Path
        The folder (or image file).
    train, val : list of str
        Ids.
    val_on_train : bool
        True when there were too few images to hold any out, so validation scores the
        training images.
    items : dict or None
        Id -> :class:`InputItem` for a folder that is not in the DSB layout (None for DSB).
    """

    def __init__(self, root: Path, train: list[str], val: list[str], val_on_train: bool,
                 items: dict[str, InputItem] | None) -> None:
        self.root, self.train, self.val, self.val_on_train, self.items = root, train, val, val_on_train, items

    def load(self, ids: Sequence[str], normalize: NormalizeConfig, progress: bool = True,
             diameter: float | None = None, workers: int = 0) -> list[TrainingSample]:
        """Training samples of ``ids`` (read from the DSB layout or from the found items)."""
        if self.items is None:
            from nucleiseg.training.data import load_samples

            return load_samples(self.root, ids, normalize, progress, diameter, workers)
        return load_items([self.items[i] for i in ids], normalize, progress, diameter, workers)


def training_split(data: str | Path, val_fraction: float, seed: int, allow_measuring_only: bool = False) -> TrainingSplit:
    """Find the images of ``data`` and split them (see :func:`choose_split`).

    A DSB-layout folder's ids are its sample folders (no other check: DSB data is for
    training); any other layout goes through :func:`labelled_items`. Both are split by
    :func:`choose_split`, which for a folder of at least five images is :func:`split_ids`.
    """
    from nucleiseg.training.data import available_ids

    root = Path(data)
    ids = available_ids(root) if root.is_dir() else []
    if ids:
        return TrainingSplit(root, *choose_split(ids, val_fraction, seed), None)
    items = {item.id: item for item in labelled_items(root, allow_measuring_only)}
    train, val, on_train = choose_split(list(items), val_fraction, seed)
    return TrainingSplit(root, train, val, on_train, items)
