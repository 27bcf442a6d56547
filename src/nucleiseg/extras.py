"""Optional dependencies: which extra installs which package, and one-line errors when one is missing.

``pip install nucleiseg`` segments, evaluates, inspects and exports results with ONNX Runtime;
training, the PyTorch backend and exporting new weights need ``nucleiseg[train]``; the web app
``[app]``, Dask ``[distributed]``, napari ``[napari]``, bioimage.io packages ``[bioimageio]``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRA_OF", "MissingExtraError", "extra_for", "missing_extra", "require"]

#: Top-level import name -> the extra that installs it.
EXTRA_OF: dict[str, str] = {
    "torch": "train",
    "albumentations": "train",
    "albucore": "train",
    "onnx": "train",
    "cv2": "train",
    "fastapi": "app",
    "uvicorn": "app",
    "multipart": "app",
    "python_multipart": "app",
    "httpx": "app",
    "dask": "distributed",
    "distributed": "distributed",
    "zarr": "distributed",
    "napari": "napari",
    "magicgui": "napari",
    "npe2": "napari",
    "bioimageio": "bioimageio",
    "psutil": "export",
}


class MissingExtraError(ImportError):
    """An optional package is missing; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str | None = None) -> None:
        what = purpose or f"this command needs {module}"
        super().__init__(f"{what}, which is not installed: pip install 'nucleiseg[{extra}]'", name=module)
        self.extra = extra


def extra_for(exc: BaseException) -> MissingExtraError | None:
    """The :class:`MissingExtraError` an ``ImportError`` of an optional package stands for, else None."""
    if isinstance(exc, MissingExtraError):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRA_OF:
            return MissingExtraError(top, EXTRA_OF[top])
    return None


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming its extra.

    Parameters
    ----------
    module : str
        Import name (``"torch"``).
    purpose : str, optional
        What needs it, for the message (``"training"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(top, EXTRA_OF.get(top, "all"), f"{purpose} needs {top}" if purpose else None) from exc


def missing_extra(module: str, purpose: str) -> str | None:
    """The one-line message for ``purpose`` when ``module`` cannot be imported here, else None.

    Looks the module up without importing it (a web page asking whether it can train should not
    load PyTorch).
    """
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    top = module.split(".")[0]
    return str(MissingExtraError(top, EXTRA_OF.get(top, "all"), f"{purpose} needs {top}"))
