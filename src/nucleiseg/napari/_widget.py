"""The *Segment nuclei* dock widget: runs :func:`~nucleiseg.napari._core.segment_layer_data` in a
worker thread (napari's ``thread_worker``) and adds the Labels layer with the measurements as
its ``features``.

No ``from __future__ import annotations`` here: magicgui reads the real annotation objects.
"""


import napari.layers
import numpy as np
from magicgui import magic_factory
from napari.qt.threading import FunctionWorker, thread_worker
from napari.types import LayerDataTuple
from qtpy.QtCore import QTimer

from nucleiseg.napari._core import model_names, segment_layer_data

__all__ = ["segment_nuclei", "segment_nuclei_widget"]


def segment_nuclei(
    image: napari.layers.Image,
    model: str = "default",
    tta: bool = False,
    diameter: float = 0.0,
    channel: int = -1,
) -> FunctionWorker[LayerDataTuple]:
    """Segment the nuclei of ``image`` off the GUI thread; napari adds the returned Labels layer.

    Parameters
    ----------
    image : napari.layers.Image
        The image layer (gray, RGB, or a T/Z stack).
    model : str
        Bundled model or ``"classical"``.
    tta : bool
        Test-time augmentation (8 flips/rotations, slower).
    diameter : float
        Nucleus diameter in pixels; 0 estimates it.
    channel : int
        Nuclear channel (RGB colour or first dimension); -1 uses all.
    """
    if image is None:
        raise ValueError("choose an Image layer to segment")
    data, rgb, name = np.asarray(image.data), bool(image.rgb), image.name

    def run() -> LayerDataTuple:
        return segment_layer_data(data, rgb, model, tta, diameter, channel, name)

    worker = thread_worker(run, start_thread=False)()
    # napari connects the worker's ``returned`` signal to "add the layer" after this function
    # returns; start on the next turn of the event loop, so the result can never come first.
    QTimer.singleShot(0, worker.start)
    return worker


segment_nuclei_widget = magic_factory(
    segment_nuclei,
    call_button="Segment nuclei",
    model={"choices": model_names(), "tooltip": "bundled model, or the network-free classical baseline"},
    tta={"label": "TTA", "tooltip": "average the 8 flips/rotations (slower)"},
    diameter={"min": 0.0, "max": 1000.0, "step": 1.0, "tooltip": "nucleus diameter in pixels; 0 = estimate"},
    channel={"min": -1, "max": 63, "tooltip": "nuclear channel: RGB colour or first dimension; -1 = all"},
)
