"""Image and label-image reading/writing: formats, dtypes, broken files, bombs, atomic writes."""

from __future__ import annotations

import pickle
import struct
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleiseg.io import images as images_mod
from nucleiseg.io.images import (
    ImageReadError,
    read_image,
    read_image_shape,
    read_labels,
    to_uint8_rgb,
    write_image,
    write_labels,
)

RNG = np.random.default_rng(0)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return path


def test_png_8bit_gray_and_rgba(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, (17, 23), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.dtype == np.uint8 and np.array_equal(got, gray)

    rgba = RNG.integers(0, 256, (17, 23, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.shape == (17, 23, 3) and np.array_equal(got, rgba[..., :3])


def test_png_16bit_gray_keeps_dtype(tmp_path: Path) -> None:
    gray = RNG.integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, gray)


def test_palette_and_gray_alpha(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    got = read_image(tmp_path / "p.png")
    assert got.shape == (2, 2, 3)
    assert got[0, 0].tolist() == [10, 20, 30] and got[0, 1].tolist() == [200, 100, 0]
    assert read_labels(tmp_path / "p.png").tolist() == idx.tolist()  # labels keep palette indices

    Image.fromarray(np.full((5, 6), 77, np.uint8)).convert("LA").save(tmp_path / "la.png")
    got = read_image(tmp_path / "la.png")
    assert got.shape == (5, 6) and np.all(got == 77)


def test_tiff_dtypes_and_singleton_axes(tmp_path: Path) -> None:
    u16 = RNG.integers(0, 65536, (1, 12, 10, 1), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16, photometric="minisblack")
    got = read_image(tmp_path / "u16.tif")
    assert got.shape == (12, 10) and got.dtype == np.uint16 and np.array_equal(got, u16[0, ..., 0])

    rgb = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    assert read_image_shape(tmp_path / "rgb.tif") == (12, 10)

    f64 = RNG.random((6, 7))
    tifffile.imwrite(tmp_path / "f.tif", f64)
    got = read_image(tmp_path / "f.tif")
    assert got.dtype == np.float32 and np.allclose(got, f64, atol=1e-6)

    cyx = RNG.integers(0, 4096, (3, 12, 10), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(ImageReadError, match="3 planes stored one after another .* ambiguous; give --channel N"):
        read_image(tmp_path / "cyx.tif")  # channels, not colour: only interleaved RGB is read as colour


@pytest.mark.parametrize("shape", [(5, 12, 10), (2, 3, 12, 10)])
def test_tiff_stacks_are_rejected(tmp_path: Path, shape: tuple[int, ...]) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros(shape, np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match="stack of shape"):
        read_image(tmp_path / "stack.tif")


def test_jpeg_and_bmp(tmp_path: Path) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, 12:] = (200, 50, 20)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "x.bmp")
    jpg = read_image(tmp_path / "x.jpg")
    assert jpg.shape == rgb.shape and np.abs(jpg.astype(int) - rgb).mean() < 8
    assert np.array_equal(read_image(tmp_path / "x.bmp"), rgb)
    assert read_image_shape(tmp_path / "x.jpg") == (16, 24)


def test_broken_files_raise_one_line_errors(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {"truncated.png": "truncated", "text.png": "not a PNG", "empty.png": "empty", "missing.png": "no such"}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as info:
            read_image(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ") and "\n" not in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # crosses data-loader worker processes intact
    assert isinstance(copy, ImageReadError) and str(copy) == str(info.value)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(bomb)
    # Above Pillow's own warning threshold (~89 Mpx) but below ours: no warning may surface.
    big = _png_header_only(tmp_path / "big.png", 12_000, 9_000)
    with pytest.raises(ImageReadError, match="limit of 100000000"):
        read_image(big, max_pixels=100_000_000)
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((40, 50), np.uint8))
    with pytest.raises(ImageReadError, match="2000 pixels"):
        read_image(tmp_path / "t.tif", max_pixels=1999)
    assert read_image(tmp_path / "t.tif", max_pixels=2000).shape == (40, 50)


def test_read_labels_binary_colour_and_float(tmp_path: Path) -> None:
    binary = np.zeros((8, 8), np.uint8)
    binary[2:5, 2:5] = 255
    Image.fromarray(binary).save(tmp_path / "bin.png")
    got = read_labels(tmp_path / "bin.png")
    assert got.dtype == np.int32 and set(np.unique(got).tolist()) == {0, 1}

    colour = np.zeros((6, 6, 3), np.uint8)
    colour[:2, :2] = (255, 0, 0)
    colour[4:, 4:] = (0, 0, 255)
    colour[:2, 4:] = (0, 0, 1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    got = read_labels(tmp_path / "colour.png")
    assert got[3, 3] == 0 and len({got[0, 0], got[5, 5], got[0, 5]}) == 3 and got.max() == 3

    tifffile.imwrite(tmp_path / "f.tif", np.array([[0, 1.0], [2.0, 7.0]], np.float32))
    assert read_labels(tmp_path / "f.tif").tolist() == [[0, 1], [2, 7]]
    tifffile.imwrite(tmp_path / "frac.tif", np.array([[0, 1.5]], np.float32))
    with pytest.raises(ImageReadError, match="non-integer"):
        read_labels(tmp_path / "frac.tif")
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -1]], np.int16))
    with pytest.raises(ImageReadError, match="negative"):
        read_labels(tmp_path / "neg.tif")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_labels_round_trip(tmp_path: Path, suffix: str) -> None:
    labels = RNG.integers(0, 60_000, (20, 30)).astype(np.int64)
    write_labels(tmp_path / f"l{suffix}", labels)
    got = read_labels(tmp_path / f"l{suffix}")
    assert got.dtype == np.int32 and np.array_equal(got, labels)
    if suffix == ".png":
        with Image.open(tmp_path / "l.png") as im:
            assert im.mode.startswith("I;16")
    else:
        with tifffile.TiffFile(tmp_path / "l.tif") as tif:
            assert tif.pages[0].dtype == np.uint16 and tif.pages[0].compression != 1


def test_labels_beyond_uint16(tmp_path: Path) -> None:
    labels = np.zeros((4, 5), np.uint32)
    labels[1, 1], labels[2, 3] = 70_000, 4_000_000_000
    write_labels(tmp_path / "big.tif", labels)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.pages[0].dtype == np.uint32
    got = read_labels(tmp_path / "big.tif")
    assert got.dtype == np.uint32 and np.array_equal(got, labels)
    with pytest.raises(ValueError, match="65535"):
        write_labels(tmp_path / "big.png", labels)
    with pytest.raises(ValueError, match=r"not \.jpg"):
        write_labels(tmp_path / "x.jpg", labels)
    with pytest.raises(ValueError, match="non-negative"):
        write_labels(tmp_path / "neg.tif", np.array([[-1, 0]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "labels.tif"
    write_labels(target, np.ones((3, 3), np.int32))
    before = target.read_bytes()

    def broken_imwrite(path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(images_mod, "tifffile", types.SimpleNamespace(imwrite=broken_imwrite))
    with pytest.raises(OSError, match="disk full"):
        write_labels(target, np.full((3, 3), 2, np.int32))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]
    assert target.read_bytes() == before


def test_write_image_and_display_conversion(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    write_image(tmp_path / "o.png", rgb)
    assert np.array_equal(read_image(tmp_path / "o.png"), rgb)
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "o16.png", rgb.astype(np.uint16))

    ramp = np.linspace(1000, 5000, 200, dtype=np.float64).astype(np.uint16).reshape(10, 20)
    shown = to_uint8_rgb(ramp)
    assert shown.shape == (10, 20, 3) and shown.dtype == np.uint8
    assert shown[..., 0].min() <= 3 and shown[..., 0].max() >= 252
    assert np.array_equal(shown[..., 0], shown[..., 2])
    assert np.array_equal(to_uint8_rgb(rgb), rgb)
    with_nan = np.array([[0.0, np.nan], [1.0, 0.5]], np.float32)
    assert to_uint8_rgb(with_nan).dtype == np.uint8
