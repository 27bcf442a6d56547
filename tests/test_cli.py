"""The ``nucleiseg`` command line end to end on real images (classical model: no weights needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucleiseg.cli.main import main
from nucleiseg.io.dsb import load_sample
from nucleiseg.io.rle import write_rle_csv

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture
def small_inputs(tmp_path: Path) -> Path:
    """Two real example images with ground truth beside them."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("fluo_small", "tissue_he"):
        shutil.copy(EXAMPLES / f"{name}.png", folder)
        shutil.copy(EXAMPLES / f"{name}_masks.tif", folder)
    return folder


@pytest.fixture
def dsb_subset(tmp_path: Path, real_sample_dirs: list[Path]) -> Path:
    """A DSB-layout folder with a few real samples (symlinked)."""
    root = tmp_path / "dsb"
    root.mkdir()
    for d in real_sample_dirs:
        (root / d.name).symlink_to(d)
    return root


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "nucleiseg 0." in capsys.readouterr().out
    for command in ("segment", "evaluate", "inspect", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: nucleiseg " + command in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "nucleiseg.cli.main", "--help"], capture_output=True, text=True, check=True)
    assert "segment" in out.stdout and "evaluate" in out.stdout


def test_segment_writes_all_outputs(small_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(small_inputs), "-o", str(out), "--model", "classical", "--quiet",
                 "--png", "--overlay", "--measure", "--rois", "--rle", str(out / "submission.csv")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 images segmented" in printed and "0 failed" in printed
    for name in ("fluo_small", "tissue_he"):
        labels = tifffile.imread(out / f"{name}_masks.tif")
        assert labels.dtype == np.uint16 and labels.max() > 5
        for suffix in ("_masks.png", "_overlay.png", "_diff.png", "_measurements.csv", "_rois.zip"):
            assert (out / f"{name}{suffix}").is_file(), suffix
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "classical" and run["summary"]["images"] == 2 and run["summary"]["failed"] == 0
    assert {"nucleiseg", "torch", "numpy"} <= set(run["versions"])
    assert "threshold" in run["postprocess"]
    assert (out / "submission.csv").read_text().startswith("ImageId,EncodedPixels")
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_bad_files_do_not_stop_the_batch(small_inputs, tmp_path, capsys):
    (small_inputs / "broken.png").write_text("not an image")
    (small_inputs / "truncated.png").write_bytes((EXAMPLES / "fluo_small.png").read_bytes()[:500])
    out = tmp_path / "out"
    code = main(["segment", str(small_inputs), "-o", str(out), "--model", "classical", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 images segmented" in captured.out and "2 failed" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("broken.png" in e for e in errors) and any("truncated.png" in e for e in errors)
    assert (out / "fluo_small_masks.tif").is_file() and not (out / "broken_masks.tif").exists()
    run = json.loads((out / "run.json").read_text())
    assert {f["id"] for f in run["failures"]} == {"broken", "truncated"}


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--model", "classical"])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_evaluate_ground_truth_against_itself(dsb_subset, tmp_path, capsys):
    code = main(["evaluate", "--gt", str(dsb_subset), "--pred", str(dsb_subset), "-o", str(tmp_path / "ev")])
    assert code == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())["summary"]
    assert summary["score_macro"] == 1.0 and summary["n_images"] == 2


def test_rle_csv_decodes_to_the_mask_folders(dsb_subset, tmp_path, capsys):
    labels = {d.name: load_sample(d).labels for d in sorted(dsb_subset.iterdir())}
    write_rle_csv(tmp_path / "labels.csv", labels, include_shape=True)
    code = main(["evaluate", "--gt", str(dsb_subset), "--pred", str(tmp_path / "labels.csv"), "-o", str(tmp_path / "ev")])
    assert code == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["summary"]["score_macro"] == 1.0


def test_segment_then_evaluate_dsb_layout(dsb_subset, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["segment", str(dsb_subset), "-o", str(out), "--model", "classical", "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*_masks.tif"))
    assert names == sorted(f"{d.name}_masks.tif" for d in dsb_subset.iterdir())
    assert main(["evaluate", "--gt", str(dsb_subset), "--pred", str(out), "-o", str(tmp_path / "ev")]) == 0
    score = json.loads((tmp_path / "ev" / "summary.json").read_text())["summary"]["score_macro"]
    assert 0.1 < score < 1.0


def test_inspect_writes_report(dsb_subset, tmp_path, capsys):
    assert main(["inspect", str(dsb_subset), "-o", str(tmp_path / "rep")]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["images"] == 2 and summary["nuclei"] == 27 + 36
    assert (tmp_path / "rep" / "samples.png").stat().st_size > 1000


def test_workers_give_the_serial_results(small_inputs, tmp_path, capsys):
    """Two worker processes (bundled model, spawn), one image per core on threads (the default) and
    one image at a time write the same masks, records and CSVs (one network thread per image in each)."""
    (small_inputs / "broken.png").write_text("not an image")
    runs = {}
    modes = {"processes": ["--workers", "2"], "threads": [], "serial": ["--threads", "1"]}
    for mode, flags in modes.items():
        out = tmp_path / mode
        code = main(["segment", str(small_inputs), "-o", str(out), "--quiet", "--measure", "--rle", str(out / "s.csv"), *flags])
        assert code == 1  # the broken file fails in every mode, the others are written
        runs[mode] = json.loads((out / "run.json").read_text())
        assert runs[mode]["executor"]["kind"] == mode and runs[mode]["backend"] == "onnx-int8"
    assert runs["processes"]["executor"]["workers"] == 2 and runs["serial"]["executor"]["workers"] == 1
    strip = {m: [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in runs[m]["images"]] for m in modes}
    assert strip["serial"] == strip["threads"] == strip["processes"] and [r["id"] for r in strip["serial"]] == ["fluo_small", "tissue_he"]
    assert runs["serial"]["failures"] == runs["threads"]["failures"] == runs["processes"]["failures"]
    assert runs["serial"]["failures"][0]["id"] == "broken"
    for mode in ("threads", "processes"):
        for name in ("fluo_small", "tissue_he"):
            assert np.array_equal(tifffile.imread(tmp_path / "serial" / f"{name}_masks.tif"), tifffile.imread(tmp_path / mode / f"{name}_masks.tif"))
            assert (tmp_path / "serial" / f"{name}_measurements.csv").read_text() == (tmp_path / mode / f"{name}_measurements.csv").read_text()
        assert (tmp_path / "serial" / "s.csv").read_text() == (tmp_path / mode / "s.csv").read_text()
    assert main(["segment", str(small_inputs), "-o", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_min_confidence_option_removes_faint_nuclei(small_inputs, tmp_path, capsys):
    """``--min-confidence`` reaches the post-processing and the run record (default model, int8)."""
    counts, records = {}, {}
    for value in ("0", "0.93"):
        out = tmp_path / value
        assert main(["segment", str(small_inputs / "tissue_he.png"), "-o", str(out), "--quiet", "--min-confidence", value]) == 0
        counts[value] = int(tifffile.imread(out / "tissue_he_masks.tif").max())
        records[value] = json.loads((out / "run.json").read_text())["postprocess"]["min_confidence"]
    assert records == {"0": 0.0, "0.93": 0.93}
    assert 0 < counts["0.93"] < counts["0"]


def test_min_zoom_option_reaches_the_zoom_and_the_run_record(tmp_path, make_disks):
    """``--min-zoom`` lowers the clamp on the zoom of very large nuclei (default model)."""
    labels = make_disks((480, 480), [(120, 120), (120, 360), (360, 240)], 80)
    image = tmp_path / "big.tif"
    tifffile.imwrite(image, np.where(labels > 0, 200, 20).astype(np.uint8))
    scales, records = {}, {}
    for value in (None, "0.125"):
        out = tmp_path / str(value)
        extra = [] if value is None else ["--min-zoom", value]
        assert main(["segment", str(image), "-o", str(out), "--quiet", "--diameter", "120", *extra]) == 0
        run = json.loads((out / "run.json").read_text())
        scales[value], records[value] = run["images"][0]["scale"], run["infer"]["min_zoom"]
    assert records == {None: 0.25, "0.125": 0.125}
    assert scales[None] == pytest.approx(0.25) and scales["0.125"] == pytest.approx(18 / 120, rel=1e-3)
