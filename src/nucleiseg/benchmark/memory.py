"""Resident-memory measurement: in-process sampling (:class:`PeakRSS`) and of a child process.

:func:`child_peak_rss` runs a command and samples the resident memory of its process tree;
:func:`mosaic` builds large test images with real nucleus content from a few DSB images, so
memory per megapixel can be measured on images far larger than any in the data set.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nucleiseg.heap import trim_heap

__all__ = [
    "PeakRSS", "RssSampler", "child_peak_rss", "label_mosaic", "mosaic", "mosaic_sources", "mosaic_truth", "trim_heap",
]

MB = 1024 * 1024


def _rss_reader() -> Callable[[], int]:
    """Current resident set size in bytes (psutil), or the process's peak so far without psutil."""
    try:
        import psutil
    except ImportError:  # psutil is optional: fall back to the kernel's high-water mark
        import resource
        import sys

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    proc = psutil.Process()
    return lambda: int(proc.memory_info().rss)


class PeakRSS:
    """Context manager sampling the process's resident memory every ``interval`` seconds."""

    def __init__(self, interval: float = 0.005) -> None:
        self._read = _rss_reader()
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = self.peak_bytes = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._read())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRSS:
        self.start_bytes = self.peak_bytes = self._read()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._read())


class RssSampler(threading.Thread):
    """Sample the resident memory of another process and its children until :meth:`stop`.

    Parameters
    ----------
    pid : int
        The process to watch.
    interval : float
        Seconds between samples.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # a reset must not be overwritten by a sample taken before it

    def current(self) -> int:
        """Resident bytes of the process tree now (0 once it has gone)."""
        import psutil

        try:
            return sum(p.memory_info().rss for p in (self.proc, *self.proc.children(recursive=True)))
        except psutil.Error:
            return 0

    def reset(self) -> None:
        """Start a new peak from the current value."""
        with self._lock:
            self.peak = self.current()

    def run(self) -> None:
        """Sample until :meth:`stop` is called."""
        while not self._stop_event.is_set():
            with self._lock:
                self.peak = max(self.peak, self.current())
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop_event.set()
        self.join()
        return self.peak


def child_peak_rss(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, float | bool]:
    """Run ``cmd``; its peak resident memory (MiB), wall seconds and whether it completed.

    The kernel's high-water mark of the child (``ru_maxrss`` of ``RUSAGE_CHILDREN``) is not
    used because it is the largest of all children so far; the tree is sampled every 20 ms.
    After ``timeout`` seconds the command is stopped and the peak so far is returned with
    ``completed`` False.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(proc.pid)
    sampler.start()
    completed = True
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        completed, err = False, ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peak = sampler.stop()
    if completed and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {err.strip()[-1500:]}")
    return {"peak_mb": round(peak / MB, 1), "seconds": round(time.perf_counter() - t0, 2), "completed": completed}


def _gray_sources(dsb_root: str | Path, n: int, side: int) -> list[tuple[Path, np.ndarray]]:
    """The first ``n`` gray ``side x side`` fluorescence images of a DSB-layout folder, with their folders."""
    from nucleiseg.io.images import read_image

    found: list[tuple[Path, np.ndarray]] = []
    for folder in sorted(Path(dsb_root).iterdir()):
        path = folder / "images" / f"{folder.name}.png"
        if not path.is_file():
            continue
        image = read_image(path)
        if image.shape[:2] != (side, side) or image.dtype != np.uint8:
            continue
        if image.ndim == 3:
            rgb = image[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                continue
            image = rgb[..., 0]
        found.append((folder, np.ascontiguousarray(image)))
        if len(found) == n:
            return found
    raise FileNotFoundError(f"{dsb_root}: fewer than {n} gray {side}x{side} images")


def mosaic_sources(dsb_root: str | Path, n: int = 16, side: int = 256) -> list[np.ndarray]:
    """The first ``n`` gray ``side x side`` fluorescence images of a DSB-layout folder (uint8, sorted by id)."""
    return [image for _, image in _gray_sources(dsb_root, n, side)]


def mosaic_truth(dsb_root: str | Path, n: int = 16, side: int = 256) -> list[np.ndarray]:
    """The ground-truth labels of :func:`mosaic_sources`'s images, in the same order."""
    from nucleiseg.io.dsb import merge_masks

    return [merge_masks(sorted((folder / "masks").glob("*.png")), (side, side))[0] for folder, _ in _gray_sources(dsb_root, n, side)]


def label_mosaic(sources: Sequence[np.ndarray], height: int, width: int, grid: int | None = None) -> np.ndarray:
    """The ``int32`` labels of :func:`mosaic` laid out from the same sources' labels, ids unique per copy."""
    grid = grid or int(np.ceil(np.sqrt(len(sources))))
    side = sources[0].shape[0]
    out = np.zeros((height, width), np.int32)
    offset = 0
    for top in range(0, height, side):
        for left in range(0, width, side):
            k = ((top // side) % grid) * grid + (left // side) % grid
            tile = sources[k % len(sources)][: height - top, : width - left]
            out[top : top + side, left : left + side] = np.where(tile > 0, tile.astype(np.int32) + offset, 0)
            offset += int(sources[k % len(sources)].max())
    return out


def mosaic(sources: Sequence[np.ndarray], height: int, width: int, grid: int | None = None) -> np.ndarray:
    """A ``height x width`` uint8 image tiled from ``sources`` laid out on a square grid.

    The grid (default: the smallest square holding every source) is built once and repeated,
    so the image holds real nuclei everywhere, with the sources' seams every source side.
    """
    grid = grid or int(np.ceil(np.sqrt(len(sources))))
    side = sources[0].shape[0]
    base = np.zeros((grid * side, grid * side), np.uint8)
    for k in range(grid * grid):
        r, c = divmod(k, grid)
        base[r * side : (r + 1) * side, c * side : (c + 1) * side] = sources[k % len(sources)]
    reps = (-(-height // base.shape[0]), -(-width // base.shape[1]))
    return np.ascontiguousarray(np.tile(base, reps)[:height, :width])


def blockwise_peaks(dsb_root: str | Path, sides: Sequence[int], block: int = 512, model: str = "default") -> dict[str, float]:
    """Resident memory (MiB) of streaming square mosaics block-wise into a ``_masks.tif``, in this process.

    ``startup`` is measured after loading the model and segmenting one ``block``-sized tile;
    then each side gets its peak. Run it in a fresh process, so that memory freed by earlier
    work does not hide growth.
    """
    import tempfile
    from dataclasses import replace

    from nucleiseg.distributed.stream import block_plan, write_block_labels
    from nucleiseg.inference.segmenter import Segmenter

    seg = Segmenter.from_pretrained(model)
    infer = replace(seg.config.infer, block=block, diameter=18.0)
    sources = mosaic_sources(dsb_root)
    seg.segment(mosaic(sources, block, block), infer, keep_probabilities=False)
    trim_heap()
    out: dict[str, float] = {"startup": _rss_reader()() / MB}
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            image = mosaic(sources, side, side)
            with PeakRSS() as rss:
                write_block_labels(Path(tmp) / "masks.tif", image, block_plan(seg, image, infer, seg.config.postprocess))
            out[str(side)] = rss.peak_bytes / MB
            del image
            trim_heap()
    return out

