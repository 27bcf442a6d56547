"""DSB folders (real and synthetic), input discovery and ground-truth loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.io import (
    ImageReadError,
    discover_inputs,
    is_dsb_root,
    is_dsb_sample,
    list_samples,
    load_ground_truth,
    load_item_gt,
    load_labels_only,
    load_sample,
    write_labels,
    write_rle_csv,
)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _box(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _make_sample(root: Path, sample_id: str, masks: dict[str, np.ndarray], shape: tuple[int, int] = (20, 30)) -> Path:
    """Write ``root/<id>/images/<id>.png`` (RGBA) and one PNG per mask."""
    image = np.zeros((*shape, 4), np.uint8)
    image[..., 3] = 255
    _save(root / sample_id / "images" / f"{sample_id}.png", image)
    for name, mask in masks.items():
        _save(root / sample_id / "masks" / name, mask)
    (root / sample_id / "masks").mkdir(parents=True, exist_ok=True)
    return root / sample_id


# --- DSB -------------------------------------------------------------------------------------


def test_real_sample_labels_match_mask_files(real_sample_dirs: list[Path]) -> None:
    sample_dir = real_sample_dirs[0]
    sample = load_sample(sample_dir)
    mask_files = sorted((sample_dir / "masks").glob("*.png"))
    masks = []
    for f in mask_files:
        with Image.open(f) as im:
            masks.append(np.asarray(im) > 0)
    non_empty = [m for m in masks if m.any()]
    assert sample.id == sample_dir.name and sample.image_path.is_file()
    assert sample.image.shape == (*sample.labels.shape, 3) and sample.image.dtype == np.uint8
    assert sample.labels.dtype == np.int32
    ids = np.unique(sample.labels)
    assert ids[ids > 0].tolist() == list(range(1, len(non_empty) + 1))
    # Each label is exactly its mask file (minus pixels claimed by an earlier overlapping mask).
    first = non_empty[0]
    assert np.array_equal(sample.labels == 1, first)
    assert np.array_equal(load_labels_only(sample_dir), sample.labels)


def test_real_root_listing(dsb_root: Path, real_sample_dirs: list[Path]) -> None:
    assert is_dsb_root(dsb_root) and not is_dsb_sample(dsb_root)
    assert is_dsb_sample(real_sample_dirs[0]) and not is_dsb_root(real_sample_dirs[0])
    samples = list_samples(dsb_root)
    assert samples == sorted(samples) and set(real_sample_dirs) <= set(samples)
    assert all((s / "images" / f"{s.name}.png").is_file() for s in samples)


def test_synthetic_overlap_and_empty_masks(tmp_path: Path) -> None:
    shape = (20, 30)
    sample_dir = _make_sample(
        tmp_path,
        "s1",
        {
            "a.png": _box(shape, 2, 8, 2, 8),
            "b.png": _box(shape, 6, 12, 6, 12),  # overlaps a in rows 6-7, cols 6-7: 4 pixels
            "c.png": np.zeros(shape, np.uint8),
            "d.png": _box(shape, 15, 18, 20, 25),
        },
    )
    sample = load_sample(sample_dir)
    assert sample.labels.max() == 3
    assert np.count_nonzero(sample.labels == 1) == 36 and np.count_nonzero(sample.labels == 2) == 32
    assert np.all(sample.labels[6:8, 6:8] == 1)
    assert np.count_nonzero(sample.labels == 3) == 15
    overlap = [p for p in sample.problems if "overlaps" in p]
    assert len(overlap) == 1 and "b.png" in overlap[0] and "a.png" in overlap[0] and "4 pixels" in overlap[0]
    assert any("empty" in p and "c.png" in p for p in sample.problems)
    quiet = load_sample(sample_dir, check=False)
    assert quiet.problems == [] and np.array_equal(quiet.labels, sample.labels)


def test_synthetic_size_mismatch_names_mask(tmp_path: Path) -> None:
    sample_dir = _make_sample(tmp_path, "s2", {"ok.png": _box((20, 30), 1, 3, 1, 3)})
    _save(sample_dir / "masks" / "wrong.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageReadError, match="wrong.png"):
        load_sample(sample_dir)
    with pytest.raises(ValueError, match="not a DSB sample"):
        load_sample(tmp_path)


# --- discover_inputs ---------------------------------------------------------------------------


def test_discover_cellpose_pairs(tmp_path: Path) -> None:
    img = np.zeros((8, 9), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img)
    write_labels(tmp_path / "a_masks.tif", _box((8, 9), 1, 4, 1, 4).astype(np.int32) // 255 * 7)
    _save(tmp_path / "b.png", img.astype(np.uint8))
    write_labels(tmp_path / "b_masks.png", np.zeros((8, 9), np.int32))
    _save(tmp_path / "sub" / "c.jpg", np.zeros((8, 9, 3), np.uint8))
    (tmp_path / ".hidden.png").write_bytes(b"")
    items = discover_inputs([tmp_path])
    assert [i.id for i in items] == ["a", "b", "c"]
    assert [i.gt_kind for i in items] == ["label", "label", None]
    assert items[0].gt_path == tmp_path / "a_masks.tif"
    gt = load_item_gt(items[0])
    assert gt is not None and gt.max() == 7 and np.count_nonzero(gt) == 9
    assert load_item_gt(items[2]) is None
    assert discover_inputs(tmp_path / "a.tif")[0].gt_path == tmp_path / "a_masks.tif"


def test_discover_images_masks_layout(tmp_path: Path) -> None:
    shape = (10, 12)
    _save(tmp_path / "images" / "x.png", np.zeros(shape, np.uint8))
    _save(tmp_path / "images" / "y.png", np.zeros(shape, np.uint8))
    two_blobs = _box(shape, 1, 3, 1, 3) | _box(shape, 6, 9, 6, 9)
    _save(tmp_path / "masks" / "x.png", two_blobs)  # binary: split into connected components
    _save(tmp_path / "masks" / "y" / "m1.png", _box(shape, 0, 2, 0, 2))
    _save(tmp_path / "masks" / "y" / "m2.png", _box(shape, 5, 7, 5, 7))
    items = discover_inputs([tmp_path])
    assert [(i.id, i.gt_kind) for i in items] == [("x", "label"), ("y", "maskdir")]
    x_gt, y_gt = load_item_gt(items[0]), load_item_gt(items[1])
    assert x_gt is not None and x_gt.max() == 2 and np.count_nonzero(x_gt) == 13
    assert y_gt is not None and y_gt.max() == 2 and np.count_nonzero(y_gt) == 8
    gt = load_ground_truth(tmp_path)
    assert sorted(gt) == ["x", "y"] and np.array_equal(gt["y"], y_gt)


def test_discover_dsb_layouts_and_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "dsb"
    _make_sample(root, "s1", {"m.png": _box((20, 30), 1, 5, 1, 5)})
    _make_sample(root, "s2", {})
    items = discover_inputs([root])
    assert [(i.id, i.gt_kind) for i in items] == [("s1", "dsb"), ("s2", "dsb")]
    gt = load_item_gt(items[0])
    assert gt is not None and np.count_nonzero(gt) == 16
    assert [i.id for i in discover_inputs([root / "s2"])] == ["s2"]
    assert discover_inputs([root / "s1" / "images" / "s1.png"])[0].gt_kind == "dsb"
    assert sorted(load_ground_truth(root)) == ["s1", "s2"]

    _save(tmp_path / "d1" / "x.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "d2" / "x.png", np.zeros((4, 4), np.uint8))
    items = discover_inputs([tmp_path / "d1", tmp_path / "d2", tmp_path / "d1" / "x.png"])
    assert len(items) == 2 and len({i.id for i in items}) == 2
    nested = discover_inputs([tmp_path])
    ids = [i.id for i in nested]
    assert "d1/x" in ids and "d2/x" in ids and "s1" in ids and len(ids) == len(set(ids)) == 4


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such"):
        discover_inputs([tmp_path / "nope"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an image"):
        discover_inputs([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="no input images"):
        discover_inputs([tmp_path])


# --- load_ground_truth ---------------------------------------------------------------------------


def test_ground_truth_from_label_folder_and_csv(tmp_path: Path) -> None:
    labels = np.zeros((6, 7), np.int32)
    labels[1:3, 1:3], labels[4:6, 4:7] = 5, 9
    write_labels(tmp_path / "gt" / "img1_masks.tif", labels)
    tifffile.imwrite(tmp_path / "gt" / "img1.tif", np.zeros((6, 7), np.uint16))  # image beside: ignored
    gt = load_ground_truth(tmp_path / "gt")
    assert list(gt) == ["img1"] and np.array_equal(gt["img1"], labels)
    assert list(load_ground_truth(tmp_path / "gt" / "img1_masks.tif")) == ["img1"]

    write_rle_csv(tmp_path / "with.csv", {"img1": labels, "blank": np.zeros((3, 3), np.int32)}, include_shape=True)
    gt = load_ground_truth(tmp_path / "with.csv")
    assert gt["blank"].shape == (3, 3) and not gt["blank"].any()
    assert gt["img1"].max() == 2 and np.array_equal(gt["img1"] > 0, labels > 0)
    write_rle_csv(tmp_path / "without.csv", {"img1": labels})
    with pytest.raises(ValueError, match="Height and Width"):
        load_ground_truth(tmp_path / "without.csv")
    assert load_ground_truth(tmp_path / "without.csv", shapes={"img1": (6, 7)})["img1"].max() == 2
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "missing")
