"""The accuracy suite: its sets, its held-out list and that its rows are `nucleiseg evaluate`'s scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nucleiseg.benchmark.accuracy import format_markdown, run_set, suite_signature, unseen_kinds
from nucleiseg.benchmark.suite_sets import SuiteSet, image_kind, prepare_sets, validation_split_ids
from nucleiseg.cli.main import main as cli
from nucleiseg.io import read_image, read_labels
from nucleiseg.io.splits import bbbc039_heldout, bbbc039_training, heldout_ids

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def test_bbbc039_heldout_list_is_the_seeded_split_of_the_folder() -> None:
    ids = sorted(p.stem for p in (SHARED / "external" / "bbbc039" / "images").glob("*.tif"))
    held = bbbc039_heldout()
    assert len(held) == 40 and held == heldout_ids(ids, 40, 2018)
    train = bbbc039_training(ids)
    assert not set(train) & set(held) and len(train) + len(held) == len(ids)


def test_heldout_ids_depend_only_on_the_ids() -> None:
    ids = [f"img{i}" for i in range(30)]
    assert heldout_ids(ids, 5) == heldout_ids(list(reversed(ids)), 5)
    assert set(heldout_ids(ids, 5)) <= set(heldout_ids(ids + ["extra"], 6)) | {"extra"}
    with pytest.raises(ValueError):
        heldout_ids(ids, 31)


def test_image_kind_of_the_examples() -> None:
    assert image_kind(read_image(REPO / "examples" / "tissue_he.png")) == "tissue"
    assert image_kind(read_image(REPO / "examples" / "fluo_small.png")) == "fluorescence"
    assert image_kind(read_image(REPO / "examples" / "brightfield.png")) == "brightfield"


def test_prepare_sets_zooms_images_and_truth_together(tmp_path: Path) -> None:
    sets = prepare_sets(SHARED, tmp_path, zooms={0.5: 2, 2.0: 1}, progress=False)
    names = [s.name for s in sets]
    assert names == ["val", "val_x0.5", "val_x2", "bbbc039_heldout", "monuseg_test"]
    val = sets[0]
    assert list(val.ids) == validation_split_ids() and len(val.ids) == 67
    assert len(sets[3].ids) == 40 and len(sets[4].ids) == 14
    for zoomed in sets[1:3]:
        for image_id in zoomed.ids:
            native = read_labels(next((val.inputs / image_id / "masks").iterdir()))
            image = read_image(zoomed.inputs / f"{image_id}.png")
            truth = read_labels(zoomed.truth / f"{image_id}.tif")
            assert image.shape[:2] == truth.shape
            assert truth.shape == tuple(round(s * zoomed.zoom) for s in native.shape)
    # a second call reuses the written files (manifest unchanged)
    stamp = sets[1].inputs.parent / "manifest.json"
    before = stamp.stat().st_mtime_ns
    assert suite_signature(prepare_sets(SHARED, tmp_path, zooms={0.5: 2, 2.0: 1}, progress=False)) == suite_signature(sets)
    assert stamp.stat().st_mtime_ns == before


def test_suite_row_equals_nucleiseg_evaluate(tmp_path: Path, dsb_root: Path) -> None:
    ids = validation_split_ids()[:3]
    folder = tmp_path / "set"
    folder.mkdir()
    for i in ids:
        (folder / i).symlink_to(dsb_root / i, target_is_directory=True)
    row = run_set(SuiteSet("tiny", "validation", "three images", folder, folder, tuple(ids)), "classical", tmp_path / "pred")
    assert row["images"] == 3 and row["failed"] == 0 and row["images_per_s"] > 0
    assert cli(["evaluate", "--gt", str(folder), "--pred", str(tmp_path / "pred"), "-o", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert row["score"] == pytest.approx(summary["summary"]["score_macro"], abs=1e-12)
    assert row["n_true"] == summary["summary"]["n_true"] and row["n_pred"] == summary["summary"]["n_pred"]
    per_image = {r["id"]: r["score"] for r in summary["per_image"]}
    assert row["per_image"] == pytest.approx(per_image, abs=1e-5)
    assert 0.0 < row["score"] < 1.0


def test_unseen_kinds_weighs_each_group_once() -> None:
    def make(name: str, group: str) -> SuiteSet:
        return SuiteSet(name, group, name, Path("."), Path("."), ("a",))

    sets = [make("val", "validation"), make("z1", "zoom"), make("z2", "zoom"), make("z3", "zoom"),
            make("b", "bbbc039"), make("m", "monuseg")]
    rows = {"val": {"score": 0.9}, "z1": {"score": 0.3}, "z2": {"score": 0.6}, "z3": {"score": 0.0},
            "b": {"score": 0.6}, "m": {"score": 0.0}}
    assert unseen_kinds(rows, sets) == pytest.approx(np.mean([0.3, 0.6, 0.0]))


def test_markdown_table_leads_with_unseen_kinds() -> None:
    row = {"score": 0.5, "ap50": 0.7, "f1_50": 0.8, "n_true": 10, "n_pred": 12, "images": 2, "images_per_s": 1.0}
    result = {
        "model": "m", "options": {}, "seconds": 60.0,
        "rows": {"val": row, "z": {**row, "native_same_images": 0.55}},
        "baseline": {"val": {**row, "score": 0.4}, "z": {**row, "score": 0.3}},
        "val_by_kind": {"model": {"fluorescence": {"images": 2, "score": 0.5}},
                        "baseline": {"fluorescence": {"images": 2, "score": 0.4}}},
        "summary": {"unseen_kinds": 0.5, "validation": 0.5, "baseline_unseen_kinds": 0.3, "baseline_validation": 0.4},
        "sets": [{"name": "val", "group": "validation", "description": "V"}, {"name": "z", "group": "zoom", "description": "Z"}],
    }
    text = format_markdown(result, "cmd")
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert "unseen kinds" in lines[2] and "0.5000" in lines[2] and "0.3000" in lines[2]
    assert "of which fluorescence" in text and "0.5500" in text and "`cmd`" in text
