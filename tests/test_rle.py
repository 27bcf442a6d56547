"""Kaggle run-length encoding: hand-computed examples, validation, round trips and CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nucleiseg.io.rle import (
    labels_to_rles,
    read_rle_csv,
    rle_decode,
    rle_encode,
    rles_to_labels,
    write_rle_csv,
)


def _reference_encode(mask: np.ndarray) -> str:
    """Plain-Python Kaggle RLE: walk pixels top-to-bottom, then left-to-right, from 1."""
    runs: list[int] = []
    prev = False
    for n, value in enumerate(mask.T.flatten().tolist(), start=1):
        if value and not prev:
            runs += [n, 0]
        if value:
            runs[-1] += 1
        prev = bool(value)
    return " ".join(map(str, runs))


def test_hand_computed_3x3() -> None:
    mask = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 0]], bool)
    # Column-major numbering: column 1 = pixels 1-3, column 2 = 4-6, column 3 = 7-9.
    assert rle_encode(mask) == "4 3 8 1"
    assert np.array_equal(rle_decode("4 3 8 1", (3, 3)), mask)
    corner = np.zeros((2, 3), bool)
    corner[1, 2] = True  # last pixel
    assert rle_encode(corner) == "6 1"
    assert rle_encode(np.zeros((2, 2))) == ""
    assert rle_encode(np.ones((2, 2))) == "1 4"


def test_decode_kaggle_example() -> None:
    # "1 3 10 5": pixels 1,2,3 and 10-14 of a 5x4 image.
    mask = rle_decode("1 3 10 5", (5, 4))
    flat = mask.T.ravel()
    assert np.flatnonzero(flat).tolist() == [0, 1, 2, 9, 10, 11, 12, 13]
    assert not rle_decode("", (2, 2)).any() and not rle_decode("   ", (2, 2)).any()


@pytest.mark.parametrize(
    ("rle", "problem"),
    [
        ("1", "odd number"),
        ("1 2 3", "odd number"),
        ("0 2", "below 1"),
        ("1 0", "not positive"),
        ("2 -1", "not positive"),
        ("8 3", "beyond the image"),
        ("5 2 1 2", "unsorted or overlap"),
        ("1 3 3 1", "unsorted or overlap"),
        ("1 x", "not an integer"),
    ],
)
def test_decode_rejects_bad_rle(rle: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        rle_decode(rle, (3, 3))


def test_labels_to_rles_and_back() -> None:
    labels = np.array([[0, 7, 7], [3, 7, 0], [3, 0, 3]])
    # id 3: pixels (1,0)->2, (2,0)->3, (2,2)->9 ; id 7: (0,1)->4, (1,1)->5, (0,2)->7
    assert labels_to_rles(labels) == ["2 2 9 1", "4 2 7 1"]
    back = rles_to_labels(labels_to_rles(labels), labels.shape)
    assert back.dtype == np.int32 and np.array_equal(back == 1, labels == 3) and np.array_equal(back == 2, labels == 7)
    assert labels_to_rles(np.zeros((4, 4), np.int32)) == []
    with pytest.raises(ValueError, match="RLE 2: overlaps an earlier"):
        rles_to_labels(["1 2", "2 2"], (3, 3))
    with pytest.raises(ValueError, match="RLE 1: .*odd"):
        rles_to_labels(["1"], (3, 3))


@settings(max_examples=50, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_mask_round_trip(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert rle == _reference_encode(mask)
    assert np.array_equal(rle_decode(rle, mask.shape), mask)


@settings(max_examples=50, deadline=None)
@given(arrays(np.int32, st.tuples(st.integers(1, 10), st.integers(1, 10)), elements=st.integers(0, 6)))
def test_label_image_round_trip(labels: np.ndarray) -> None:
    ids = [v for v in np.unique(labels).tolist() if v > 0]
    rles = labels_to_rles(labels)
    assert rles == [_reference_encode(labels == v) for v in ids]
    back = rles_to_labels(rles, labels.shape)
    for k, v in enumerate(ids, start=1):
        assert np.array_equal(back == k, labels == v)
    assert np.array_equal(back > 0, labels > 0)


def test_csv_round_trip_with_empty_image(tmp_path: Path) -> None:
    a = np.zeros((5, 6), np.int32)
    a[0:2, 0:2], a[3:5, 2:6] = 4, 2
    data = {"img_a": a, "img_empty": np.zeros((3, 4), np.int32)}
    write_rle_csv(tmp_path / "sub.csv", data, include_shape=True)
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels,Height,Width"
    assert lines[-1] == "img_empty,,3,4" and len(lines) == 4
    back = read_rle_csv(tmp_path / "sub.csv")
    assert list(back) == ["img_a", "img_empty"]
    assert back["img_empty"].shape == (3, 4) and not back["img_empty"].any()
    assert np.array_equal(back["img_a"] == 1, a == 2) and np.array_equal(back["img_a"] == 2, a == 4)

    write_rle_csv(tmp_path / "plain.csv", data)
    assert (tmp_path / "plain.csv").read_text().splitlines()[-1] == "img_empty,"
    with pytest.raises(ValueError, match=r"line 2 \(ImageId img_a\).*Height and Width"):
        read_rle_csv(tmp_path / "plain.csv")
    back = read_rle_csv(tmp_path / "plain.csv", shapes={"img_a": (5, 6), "img_empty": (3, 4)})
    assert np.array_equal(back["img_a"] > 0, a > 0) and back["img_empty"].shape == (3, 4)


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("ImageId,EncodedPixels,Height,Width\nx,1 2,3,3\nx,8 5,3,3\n")
    with pytest.raises(ValueError, match="line 3 .*beyond"):
        read_rle_csv(path)
    path.write_text("ImageId,Pixels\nx,1 2\n")
    with pytest.raises(ValueError, match="missing column.*EncodedPixels"):
        read_rle_csv(path)
    path.write_text("ImageId,EncodedPixels,Height,Width\nx,1 2,3,3\nx,4 1,4,3\n")
    with pytest.raises(ValueError, match="line 3.*shape"):
        read_rle_csv(path)
