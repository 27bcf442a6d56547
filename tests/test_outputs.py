"""Human-facing outputs: overlays, measurements and ImageJ ROI sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import roifile
from skimage.measure import regionprops

from nucleiseg.io.outputs import (
    MEASUREMENT_COLUMNS,
    difference_overlay,
    measure,
    overlay_outlines,
    write_measurements,
    write_rois,
)


@pytest.fixture
def two_disks(make_disks) -> np.ndarray:
    return make_disks((64, 80), [(20, 20), (40, 55)], 9)


def test_measure_matches_regionprops(two_disks: np.ndarray) -> None:
    image = np.zeros((64, 80), np.uint16)
    image[two_disks == 1], image[two_disks == 2] = 100, 300
    image[40, 55] = 1000
    df = measure(two_disks, image)
    assert list(df.columns) == list(MEASUREMENT_COLUMNS) and len(df) == 2
    disk_area = int(np.count_nonzero(two_disks == 1))
    assert df["area"].tolist() == [disk_area, disk_area] == [r.area for r in regionprops(two_disks)]
    assert df[["centroid_y", "centroid_x"]].to_numpy().tolist() == [[20.0, 20.0], [40.0, 55.0]]
    assert df.loc[0, ["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]].tolist() == [11, 11, 30, 30]
    assert df["mean_intensity"].iloc[0] == 100
    assert df["mean_intensity"].iloc[1] == pytest.approx((300 * (disk_area - 1) + 1000) / disk_area)
    assert df["max_intensity"].tolist() == [100, 1000]
    assert df["solidity"].gt(0.9).all() and df["eccentricity"].lt(0.2).all()

    rgb = np.stack([image, image * 2, image * 3], axis=-1)
    assert measure(two_disks, rgb)["mean_intensity"].iloc[0] == pytest.approx(200)


def test_measure_without_image_and_empty(two_disks: np.ndarray, tmp_path: Path) -> None:
    df = measure(two_disks)
    assert list(df.columns) == list(MEASUREMENT_COLUMNS[:-2])
    empty = measure(np.zeros((5, 5), np.int32), np.zeros((5, 5)))
    assert len(empty) == 0 and list(empty.columns) == list(MEASUREMENT_COLUMNS)
    write_measurements(tmp_path / "m.csv", df)
    back = pd.read_csv(tmp_path / "m.csv")
    assert back["label"].tolist() == [1, 2] and np.allclose(back["area"], df["area"])
    with pytest.raises(ValueError, match="does not match"):
        measure(two_disks, np.zeros((3, 3)))


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rois_readable_by_roifile(two_disks: np.ndarray, tmp_path: Path) -> None:
    labels = two_disks.copy()
    labels[60, 5] = 7  # a one-pixel nucleus
    assert write_rois(tmp_path / "r.zip", labels) == 3
    rois = roifile.roiread(tmp_path / "r.zip")
    assert isinstance(rois, list) and len(rois) == 3
    assert [r.name for r in rois] == ["0001", "0002", "0007"]
    for roi, region in zip(rois, regionprops(labels), strict=True):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        xy = roi.coordinates()
        y0, x0, y1, x1 = region.bbox
        assert xy[:, 0].min() >= x0 and xy[:, 0].max() <= x1 and xy[:, 1].min() >= y0 and xy[:, 1].max() <= y1
        if region.area > 1:  # the 0.5-level contour cuts corners: area slightly below the pixel count
            assert 0.85 * region.area < _polygon_area(xy) <= region.area
    write_rois(tmp_path / "none.zip", np.zeros((4, 4), np.int32))
    assert roifile.roiread(tmp_path / "none.zip") == []
    with pytest.raises(ValueError, match=r"\.zip"):
        write_rois(tmp_path / "r.roi", labels)


def test_overlay_outlines(two_disks: np.ndarray) -> None:
    image = np.full((64, 80), 1000, np.uint16)
    image[0, 0] = 0
    out = overlay_outlines(image, two_disks)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    base = overlay_outlines(image, np.zeros_like(two_disks))
    changed = np.any(out != base, axis=2)
    assert changed[20, 11] and changed[40, 64]  # leftmost / rightmost pixel of each disk
    assert not changed[20, 20] and not changed[0, 79]  # interiors and background untouched
    assert not np.array_equal(out[20, 11], out[40, 64])  # distinct colours per nucleus
    red = overlay_outlines(image, two_disks, color=(255, 0, 0))
    assert red[20, 11].tolist() == [255, 0, 0] and red[40, 64].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="shape"):
        overlay_outlines(image, two_disks[:10])


def test_difference_overlay(make_disks) -> None:
    true = make_disks((40, 60), [(20, 15), (20, 45)], 8)
    pred = make_disks((40, 60), [(20, 15)], 8)
    pred[2:6, 28:32] = 5  # a false positive
    image = np.full((40, 60, 3), 128, np.uint8)
    out = difference_overlay(image, true, pred).astype(int)
    fp, fn, both = out[3, 30], out[20, 45], out[20, 15]
    assert fp[2] > fp[0] + 60 and fn[0] > fn[2] + 60
    assert both[1] > both[0] and both[1] > both[2]
    assert out[35, 2].tolist() == [128, 128, 128]


def test_difference_overlay_legend_names_the_colours(make_disks) -> None:
    from nucleiseg.io.outputs import DIFF_COLOURS, legend_strip

    true = make_disks((64, 300), [(30, 40)], 10)
    image = np.full((64, 300, 3), 128, np.uint8)
    plain = difference_overlay(image, true, true, legend=False)
    out = difference_overlay(image, true, true)
    assert plain.shape == (64, 300, 3) and out.shape[0] > 64 and out.shape[1] == 300
    np.testing.assert_array_equal(out[:64], plain)  # the image keeps its rows; the legend is below
    strip = out[64:].reshape(-1, 3)
    for _, rgb, alpha in DIFF_COLOURS:  # every colour's swatch, as it looks over mid-gray
        shown = [round(128 * (1 - alpha) + c * alpha) if alpha else c for c in rgb]
        assert (np.abs(strip.astype(int) - shown).max(axis=1) <= 1).sum() >= 50, shown
    assert [t.split(":")[0] for t, _, _ in DIFF_COLOURS] == ["green", "blue", "red", "yellow"]
    assert legend_strip(60).shape[0] > legend_strip(900).shape[0]  # narrow images wrap the legend to more rows
