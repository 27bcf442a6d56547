"""Checks of a ``--device`` argument, with one-line answers instead of a PyTorch traceback.

Segmenting runs on the CPU with ONNX Runtime; a GPU is used through PyTorch (``nucleiseg[train]``
with a CUDA build of PyTorch). :func:`check_device` says in one line why a device cannot be used.
"""

from __future__ import annotations

import re

__all__ = ["DeviceError", "check_device"]

_DEVICE = re.compile(r"^(cpu|cuda|mps)(:(\d+))?$")


class DeviceError(ValueError):
    """A device that cannot be used here; the message says what to install or drop."""


def check_device(device: str) -> str:
    """Return ``device`` if it can be used, else raise :class:`DeviceError` with a one-line reason.

    Parameters
    ----------
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises
    ------
    DeviceError
        Unknown name; PyTorch missing; a PyTorch build without CUDA; no such device.
    """
    match = _DEVICE.match(device.strip().lower())
    if match is None:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(3)
    if kind == "cpu":
        return device
    try:
        import torch
    except ImportError:
        raise DeviceError(f"--device {device} needs PyTorch, which is not installed: pip install 'nucleiseg[train]' "
                          "(with a GPU build of PyTorch), or drop --device to run on the CPU") from None

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"no Apple GPU (mps) is available to PyTorch {torch.__version__}; drop --device to run on the CPU")
        return device
    if torch.version.cuda is None:
        raise DeviceError(f"this PyTorch ({torch.__version__}) has no CUDA: install a CUDA build of PyTorch "
                          "(README: Training on a GPU), or drop --device to run on the CPU")
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"no CUDA device found (PyTorch {torch.__version__}, CUDA {torch.version.cuda}): check the "
                          "GPU driver, or drop --device to run on the CPU")
    if index is not None and int(index) >= count:
        raise DeviceError(f"CUDA device {index} does not exist ({count} found: cuda:0..cuda:{count - 1})")
    return device
