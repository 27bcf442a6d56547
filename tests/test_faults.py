"""The batch driver's fault policy: a full or read-only output folder stops the batch (exit 3),
a failed image leaves nothing, readers' warnings fold into the file's one line, a dead worker
process costs only its own image, and ``evaluate`` reads the CSV ``segment --rle`` writes."""

from __future__ import annotations

import errno
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import disk_labels
from nucleiseg.bundle import ModelSpec
from nucleiseg.cli.main import main as cli_main
from nucleiseg.config import InferConfig, PostprocessConfig
from nucleiseg.inference import item as item_module
from nucleiseg.inference.executors import ProcessExecutor
from nucleiseg.inference.item import ItemStep
from nucleiseg.inference.workers import WORKER_DIED
from nucleiseg.io.atomic import STALE_TEMP
from nucleiseg.io.images import read_labels
from nucleiseg.io.labels import InputItem, discover_inputs
from nucleiseg.io.layout import OutputOptions
from nucleiseg.io.rle import read_rle_csv


def _disk_images(folder: Path, count: int) -> Path:
    """``count`` small gray images of bright disks, ``img00.png``, ``img01.png``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        centres = [tuple(rng.uniform(12, 52, 2)) for _ in range(4)]
        labels = disk_labels((64, 64), centres, 6)
        image = np.where(labels > 0, 200, 20).astype(np.uint8)
        Image.fromarray(image).save(folder / f"img{k:02d}.png")
    return folder


def _segment(*args: str) -> int:
    return cli_main(["segment", *args, "--model", "classical", "--threads", "1", "--quiet"])


def _no_space_after(monkeypatch: pytest.MonkeyPatch, good: int) -> list[str]:
    """Make the label writer fail with ENOSPC after ``good`` files; returns the names it wrote."""
    real = item_module.write_labels
    written: list[str] = []

    def write(path, labels, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if len(written) >= good:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, labels, *args, **kwargs)
        written.append(Path(path).name)

    monkeypatch.setattr(item_module, "write_labels", write)
    return written


def test_full_disk_stops_the_batch_with_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src, out = _disk_images(tmp_path / "in", 6), tmp_path / "out"
    written = _no_space_after(monkeypatch, 2)
    assert _segment(str(src), "-o", str(out), "--overlay") == 3
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and str(out) in errors[0] and "No space left on device" in errors[0], captured.err
    assert "2 images segmented" in captured.out and "stopped early" in captured.out
    assert written == ["img00_masks.tif", "img01_masks.tif"]
    # Finished images are complete; the image that hit the full disk left nothing (no overlay, no temp file).
    names = sorted(p.name for p in out.iterdir())
    assert names == ["img00_masks.tif", "img00_overlay.png", "img01_masks.tif", "img01_overlay.png", "run.json"], names
    record = json.loads((out / "run.json").read_text())
    assert record["summary"]["images"] == 2 and "No space left" in record["stopped"]


def test_read_only_output_folder_is_one_line_and_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src = _disk_images(tmp_path / "in", 2)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if self.name == "new":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert _segment(str(src), "-o", str(tmp_path / "new")) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and str(tmp_path / "new") in err, err


def test_a_failed_image_leaves_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src, out = _disk_images(tmp_path / "in", 2), tmp_path / "out"
    import nucleiseg.io.outputs as outputs

    def broken_overlay(image, labels, color=None):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 2:  # the second image: its masks are written already
            raise ValueError("overlay failed")
        return real(image, labels, color)

    calls: list[int] = []
    real = outputs.overlay_outlines
    monkeypatch.setattr(outputs, "overlay_outlines", broken_overlay)
    assert _segment(str(src), "-o", str(out), "--overlay") == 1
    assert "overlay failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["img00_masks.tif", "img00_overlay.png", "run.json"]


def test_reader_warnings_fold_into_the_files_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    src, out = _disk_images(tmp_path / "in", 2), tmp_path / "out"
    real = item_module.read_planes

    def noisy(path, channel=None, axes=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        logging.getLogger("tifffile").warning("<TiffPage 0> incorrect StripOffsets count")
        if Path(path).name == "img01.png":
            raise ValueError("cannot decode")
        return real(path, channel, axes, **kwargs)

    monkeypatch.setattr(item_module, "read_planes", noisy)
    assert _segment(str(src), "-o", str(out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "img01.png: cannot decode (while reading: tifffile: <TiffPage 0> incorrect StripOffsets" in err[0], err
    record = json.loads((out / "run.json").read_text())
    assert record["images"][0]["warnings"] == ["tifffile: <TiffPage 0> incorrect StripOffsets count"]


class DyingStep(ItemStep):
    """Kills its worker process on images named ``kill*`` (always) and ``once*`` (the first time only)."""

    def __call__(self, item: InputItem, segmenter):  # noqa: ANN001, ANN204
        marker = self.out_dir / f"{item.id}.died"
        if item.id.startswith("kill") or (item.id.startswith("once") and not marker.exists()):
            marker.touch()
            os._exit(9)
        return super().__call__(item, segmenter)


def test_a_dead_worker_costs_only_the_image_that_killed_it_twice(tmp_path: Path) -> None:
    src = _disk_images(tmp_path / "in", 6)
    (src / "img02.png").rename(src / "kill.png")
    (src / "img04.png").rename(src / "once.png")
    out = tmp_path / "out"
    out.mkdir()
    items = discover_inputs([src])
    step = DyingStep(out, OutputOptions(), InferConfig(), PostprocessConfig())
    executor = ProcessExecutor(ModelSpec.of("classical", threads=1), 2)
    outcomes = {items[i].id: o for i, o in executor.map(step, items)}
    assert set(outcomes) == {item.id for item in items}
    failed = {k: o["failure"]["error"] for k, o in outcomes.items() if "failure" in o}
    assert list(failed) == ["kill"] and WORKER_DIED in failed["kill"], failed
    assert all((out / f"{k}_masks.tif").is_file() for k in outcomes if k != "kill")
    assert executor.describe()["retried"] >= 2  # kill and once, and any image in flight beside them


def test_segment_rle_then_evaluate_round_trip(tmp_path: Path, capsys) -> None:
    src, out = _disk_images(tmp_path / "in", 3), tmp_path / "out"
    csv_path = tmp_path / "sub.csv"
    assert _segment(str(src), "-o", str(out), "--rle", str(csv_path)) == 0
    assert csv_path.read_text().splitlines()[0] == "ImageId,EncodedPixels,Height,Width"
    bare = tmp_path / "bare.csv"  # a CSV without shapes, as Kaggle wants it
    bare.write_text("\n".join(",".join(line.split(",")[:2]) for line in csv_path.read_text().splitlines()) + "\n")
    with open(bare, "a") as fh:
        fh.write("extra,1 4\n")  # a prediction without ground truth
    capsys.readouterr()
    assert cli_main(["evaluate", "--gt", str(out), "--pred", str(bare), "--rows", "0"]) == 0
    captured = capsys.readouterr()
    assert "DSB score (macro, Kaggle): 1.0000" in captured.out, captured.out
    assert "1 predictions have no ground truth (not scored): extra" in captured.err


@pytest.mark.parametrize(("shape", "phrase"), [("100000,100000", "more than the limit"), ("1e400,4", "not numbers")])
def test_rle_shapes_are_capped_before_allocating(tmp_path: Path, shape: str, phrase: str) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(f"ImageId,EncodedPixels,Height,Width\na,1 4,{shape}\n")
    with pytest.raises(ValueError, match=phrase):
        read_rle_csv(path)


def test_resume_redoes_truncated_masks_and_rebuilds_a_broken_record(tmp_path: Path, capsys) -> None:
    src, out = _disk_images(tmp_path / "in", 3), tmp_path / "out"
    assert _segment(str(src), "-o", str(out)) == 0
    clean = {p.name: read_labels(p) for p in out.glob("*_masks.tif")}
    data = (out / "img01_masks.tif").read_bytes()
    (out / "img01_masks.tif").write_bytes(data[: len(data) // 2])  # a copy cut short
    (out / "run.json").write_text('{"images": [{"id": "img00", "count": "many"}]}')  # a damaged record
    (out / ".img02_masks.ab12cd34.tmp.tif").write_bytes(b"half")  # left by a killed run
    capsys.readouterr()
    assert _segment(str(src), "-o", str(out), "--resume") == 0
    assert "3 images segmented (2 resumed)" in capsys.readouterr().out
    assert not [p for p in out.iterdir() if STALE_TEMP.match(p.name)]
    assert all(np.array_equal(read_labels(out / name), labels) for name, labels in clean.items())
    record = json.loads((out / "run.json").read_text())
    assert [r["id"] for r in record["images"]] == ["img00", "img01", "img02"] and record["skipped"] == ["img00", "img02"]


def test_gt_zip_member_leaving_the_folder_is_refused() -> None:
    import io

    from fastapi import HTTPException

    from nucleiseg.app.render import Upload, decode_ground_truth

    buffer = io.BytesIO()
    mask = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask, format="PNG")
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../x.png", mask.getvalue())
    with pytest.raises(HTTPException) as caught:
        decode_ground_truth(Upload("masks", buffer.getvalue(), "zip"), (8, 8), 10_000)
    assert caught.value.status_code == 422 and "leaves the folder" in str(caught.value.detail)


def test_a_one_pixel_tiff_stack_gets_a_clear_one_line_error(tmp_path: Path, capsys) -> None:
    import tifffile

    src = _disk_images(tmp_path / "in", 1)
    tifffile.imwrite(src / "dot.tif", np.zeros((1, 1, 1, 1), np.uint8))
    assert _segment(str(src), "-o", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("dot.tif: TIFF holds a single pixel (shape (1, 1, 1, 1)): nothing to segment"), err
