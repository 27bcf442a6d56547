"""Unpack an uploaded dataset ZIP safely: every member checked before anything lands in place.

A ZIP is refused (and nothing is left behind) when it

* is not a readable ZIP, or is encrypted (422);
* has a member whose name is absolute, holds ``..``, a drive letter or a backslash, or is a
  symbolic link (422: path traversal);
* holds more files than allowed (413), declares more uncompressed bytes than allowed, or has a
  member that expands more than ``max_ratio`` times its compressed size (413: zip bomb). The
  bytes actually inflated are counted too, so a forged header does not help;
* holds a file that is not a PNG, TIFF, JPEG or BMP image by its content (415), or no image.

Members are extracted into a private folder beside the destination, then moved into place with
one rename. Hidden files and macOS ``__MACOSX/`` folders are skipped.
"""

from __future__ import annotations

import io
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nucleiseg.app.limits import UPLOAD_KINDS, api_error

__all__ = ["ZipLimits", "extract_dataset_zip", "member_path"]

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_NAME_OK = re.compile(r"^[A-Za-z0-9._ ()+-]+$")


@dataclass(frozen=True)
class ZipLimits:
    """Caps on an uploaded dataset ZIP.

    Parameters
    ----------
    max_files : int
        Most files (images and masks) in the archive.
    max_total_bytes : int
        Most bytes once unpacked, all files together.
    max_ratio : float
        Largest uncompressed/compressed size ratio of one member (binary masks compress very
        well, so this is generous; a zip bomb exceeds it by orders of magnitude).
    """

    max_files: int = 5000
    max_total_bytes: int = 1024 * 1024 * 1024
    max_ratio: float = 250.0


def member_path(name: str, upload: str) -> PurePosixPath | None:
    """The member's relative path, None for skipped entries; 422 for unsafe names."""
    if "\\" in name or name.startswith("/") or _DRIVE.match(name) or "\x00" in name:
        raise api_error(422, f"ZIP '{upload}': unsafe member name {name[:80]!r} (absolute path or backslash)")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise api_error(422, f"ZIP '{upload}': unsafe member name {name[:80]!r} (leaves the folder)")
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    for part in parts:
        if not _NAME_OK.match(part) or len(part) > 120:
            raise api_error(422, f"ZIP '{upload}': member name {name[:80]!r} has unsupported characters")
    return PurePosixPath(*parts)


def _check_members(archive: zipfile.ZipFile, upload: str, limits: ZipLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate names, types, count and declared sizes of every member before extracting any."""
    chosen: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    declared = 0
    for info in archive.infolist():
        if info.flag_bits & 0x1:
            raise api_error(422, f"ZIP '{upload}' is encrypted")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise api_error(422, f"ZIP '{upload}': member {info.filename[:80]!r} is a symbolic link")
        rel = member_path(info.filename, upload)
        if rel is None or info.is_dir():
            continue
        chosen.append((info, rel))
        if len(chosen) > limits.max_files:
            raise api_error(413, f"ZIP '{upload}' holds more than {limits.max_files} files")
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise api_error(413, f"ZIP '{upload}' unpacks to more than {limits.max_total_bytes // (1024 * 1024)} MB")
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) and info.file_size > _CHUNK:
            raise api_error(413, f"ZIP '{upload}': {rel.name} expands {info.file_size / max(info.compress_size, 1):.0f} times (zip bomb?)")
    if not chosen:
        raise api_error(422, f"ZIP '{upload}' holds no files")
    return chosen


def _extract_one(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, upload: str, budget: int) -> int:
    """Inflate one member into ``target``, counting bytes; returns the bytes written."""
    written = 0
    head = b""
    cap = min(budget, info.file_size)  # the declared size: a forged header is caught here
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > cap:
                    raise api_error(413, f"ZIP '{upload}': {target.name} expands past its limit (zip bomb?)")
                if len(head) < 16:
                    head += chunk[:16]
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise api_error(422, f"ZIP '{upload}': cannot extract {target.name} ({type(exc).__name__})") from None
    if not any(head.startswith(magic) for magic in UPLOAD_KINDS):
        raise api_error(415, f"ZIP '{upload}': {target.name} is not a PNG, TIFF, JPEG or BMP image (judged by its content)")
    return written


def extract_dataset_zip(data: bytes, upload: str, dest: Path, limits: ZipLimits, max_pixels: int) -> Path:
    """Check and unpack a dataset ZIP into the new folder ``dest`` (atomically).

    Parameters
    ----------
    data : bytes
        The uploaded archive.
    upload : str
        Its sanitised name, for messages.
    dest : Path
        Folder to create; its parent must exist and ``dest`` must not.
    limits : ZipLimits
    max_pixels : int
        Largest image accepted, checked on every image's header.

    Returns
    -------
    Path
        ``dest``, holding the archive's folders and images.

    Raises
    ------
    HTTPException
        4xx as described in the module docstring; nothing is left in ``dest.parent``.
    """
    from nucleiseg.io.images import ImageReadError, read_image_shape

    if dest.exists():
        raise api_error(409, f"a dataset named '{dest.name}' exists already")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise api_error(422, f"'{upload}' is not a readable ZIP file") from None
    work = Path(tempfile.mkdtemp(prefix=".upload-", dir=dest.parent))
    try:
        with archive:
            members = _check_members(archive, upload, limits)
            total = 0
            for info, rel in members:
                target = work.joinpath(*rel.parts)
                if work.resolve() not in target.resolve().parents:  # belt and braces after the name checks
                    raise api_error(422, f"ZIP '{upload}': unsafe member name {info.filename[:80]!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                total += _extract_one(archive, info, target, upload, limits.max_total_bytes - total)
                try:
                    read_image_shape(target, max_pixels=max_pixels)
                except ImageReadError as exc:
                    status = 413 if "more than the limit" in exc.problem else 415
                    raise api_error(status, f"ZIP '{upload}': {rel.name} cannot be read as an image") from None
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest
