"""The *Segment nuclei* dock widget: every segmentation setting of ``nucleiseg segment``, run by
:func:`~nucleiseg.napari._core.segment_layer_data` in a worker thread (napari's
``thread_worker``); napari adds the Labels layer with the measurements as its ``features``.

Settings that may be left to the model or estimated (threshold, minimum size, minimum
confidence, diameter, pixel size, channel) use :class:`AutoValue`: an *auto* check box beside
the number, never a magic 0 or -1.

No ``from __future__ import annotations`` here: magicgui reads the real annotation objects.
"""

from pathlib import Path
from typing import Any, Optional

import napari.layers
import numpy as np
from magicgui import magic_factory
from magicgui.widgets import CheckBox, FloatSpinBox, SpinBox
from magicgui.widgets.bases import ValuedContainerWidget
from napari.qt.threading import FunctionWorker, thread_worker
from napari.types import LayerDataTuple
from qtpy.QtCore import QTimer

from nucleiseg.napari._core import (
    LayerSettings, diameter_pixels, is_model_folder, model_choices, model_postprocess, segment_layer_data,
)

__all__ = ["AutoValue", "segment_nuclei", "segment_nuclei_widget"]

#: Model folders picked with the folder button this session (offered in the model list).
_PICKED: list[str] = []


class AutoValue(ValuedContainerWidget):
    """A number that may be left automatic: value None while *auto* is ticked.

    Parameters
    ----------
    value : float, int or None
        Initial value (None: auto).
    auto_text : str
        Text of the check box (what auto means: "model's", "estimate", ...).
    integer : bool
        An integer spin box instead of a decimal one.
    min, max, step : float
        Range and step of the spin box.
    start : float, optional
        The number offered when *auto* is first unticked (default ``min``).

    While *auto* is ticked the spin box is hidden, unless :meth:`show_auto` gave it the value
    auto stands for (shown greyed out).
    """

    def __init__(
        self, value: Any = None, auto_text: str = "auto", integer: bool = False,
        min: float = 0.0, max: float = 1e6, step: float = 1.0, start: float | None = None, **kwargs: Any,
    ) -> None:
        for unused in ("annotation", "nullable"):
            kwargs.pop(unused, None)
        self._auto = CheckBox(text=auto_text, value=True)
        kind = SpinBox if integer else FloatSpinBox
        self._number = kind(min=int(min) if integer else min, max=int(max) if integer else max,
                            step=int(step) if integer else step, enabled=False, visible=False)
        if start is not None:
            self._number.value = int(start) if integer else start
        self._shown = False
        kwargs.update(widgets=[self._auto, self._number], labels=False, layout="horizontal")
        super().__init__(value=value, **kwargs)
        self.margins = (0, 0, 0, 0)
        self._auto.changed.connect(self._on_auto)
        self._number.changed.connect(lambda _: self.changed.emit(self.value))

    def _on_auto(self, auto: bool) -> None:
        self._number.enabled = not auto
        self._number.visible = not auto or self._shown
        self.changed.emit(self.value)

    def get_value(self) -> Any:
        """None while auto, else the number."""
        return None if self._auto.value else self._number.value

    def set_value(self, value: Any) -> None:
        """None ticks auto; a number unticks it and shows the number."""
        if value is not None:
            self._number.value = value
        self._auto.value = value is None
        self._number.enabled = value is not None
        self._number.visible = value is not None or self._shown

    def show_auto(self, value: Any) -> None:
        """Show what auto stands for (the model's value) in the greyed-out box, while auto."""
        if self._auto.value and value is not None:
            self._number.value = value
            self._shown = True
            self._number.visible = True


def segment_nuclei(
    image: napari.layers.Image,
    model: str = "default",
    model_folder: Optional[Path] = None,
    tta: bool = False,
    threshold: Optional[float] = None,
    min_size: Optional[int] = None,
    min_confidence: Optional[float] = None,
    diameter: Optional[float] = None,
    diameter_unit: str = "px",
    pixel_size: Optional[float] = None,
    channel: Optional[int] = None,
) -> FunctionWorker[LayerDataTuple]:
    """Segment the nuclei of ``image`` off the GUI thread; napari adds the returned Labels layer.

    Parameters
    ----------
    image : napari.layers.Image
        The image layer (gray, RGB, or a T/Z stack).
    model : str
        Bundled model, a run folder (from the runs folder or picked), or ``"classical"``.
    model_folder : Path, optional
        A model folder picked by hand; picking one adds it to ``model`` and selects it.
    tta : bool
        Test-time augmentation (8 flips/rotations, slower).
    threshold, min_size, min_confidence : optional
        Post-processing; None keeps the model's values.
    diameter : float, optional
        Nucleus diameter in ``diameter_unit``; None estimates it.
    diameter_unit : {"px", "µm"}
        Micrometres need the pixel size.
    pixel_size : float, optional
        Micrometres per pixel; None takes the layer's scale when it is not 1.
    channel : int, optional
        Nuclear channel (RGB colour or first dimension); None uses all.
    """
    if image is None:
        raise ValueError("choose an Image layer to segment")
    size = pixel_size if pixel_size is not None else _layer_pixel_size(image)
    settings = LayerSettings(
        model=str(model), tta=bool(tta), threshold=threshold, min_size=min_size, min_confidence=min_confidence,
        diameter=diameter_pixels(diameter, diameter_unit, size), pixel_size=size, channel=channel,
    )
    data, rgb, name, scale = np.asarray(image.data), bool(image.rgb), image.name, tuple(image.scale)

    def run() -> LayerDataTuple:
        labels, meta, kind = segment_layer_data(data, rgb, settings, name)
        meta["scale"] = scale[len(scale) - labels.ndim:]  # drop a channel dimension the labels lack
        return labels, meta, kind

    worker = thread_worker(run, start_thread=False)()
    # napari connects the worker's ``returned`` signal to "add the layer" after this function
    # returns; start on the next turn of the event loop, so the result can never come first.
    QTimer.singleShot(0, worker.start)
    return worker


def _layer_pixel_size(image: napari.layers.Image) -> Optional[float]:
    """The layer's x scale as µm per pixel, unless it is napari's default 1."""
    step = float(image.scale[-1])
    return None if step == 1.0 or step <= 0 else step


def _choices(widget: Any) -> list[tuple[str, str]]:
    return model_choices(extra=tuple(_PICKED))


def _init(gui: Any) -> None:
    """Wire the widget: the model's values behind *auto*, picked folders into the model list."""

    def show_model_values(model: str) -> None:
        try:
            values = model_postprocess(model)
        except (OSError, ValueError):
            return
        for key, value in values.items():
            getattr(gui, key).show_auto(value)

    def pick_folder(folder: Optional[Path]) -> None:
        if folder is None or not str(folder) or str(folder) == ".":
            return
        if not is_model_folder(folder):
            from napari.utils.notifications import show_warning

            show_warning(f"{folder}: not a model folder (it needs config.json and weights.safetensors or model.onnx)")
            return
        if str(folder) not in _PICKED:
            _PICKED.append(str(folder))
        gui.model.reset_choices()
        gui.model.value = str(folder)

    gui.model.changed.connect(show_model_values)
    gui.model_folder.changed.connect(pick_folder)
    show_model_values(gui.model.value)


segment_nuclei_widget = magic_factory(
    segment_nuclei,
    call_button="Segment nuclei",
    widget_init=_init,
    model={"choices": _choices, "tooltip": "bundled model, a run from the runs folder ($NUCLEISEG_RUNS or "
           "~/.nucleiseg/runs), a picked folder, or the network-free classical baseline"},
    model_folder={"label": "run folder", "mode": "d", "nullable": True,
                  "tooltip": "any model folder (config.json + weights); it joins the model list"},
    tta={"label": "TTA", "tooltip": "average the 8 flips/rotations (slower)"},
    threshold={"widget_type": AutoValue, "auto_text": "model's", "max": 1.0, "step": 0.05,
               "tooltip": "foreground probability threshold; auto: the model's"},
    min_size={"widget_type": AutoValue, "auto_text": "model's", "integer": True, "max": 100000,
              "label": "min size (px)", "tooltip": "remove nuclei smaller than this many pixels; auto: the model's"},
    min_confidence={"widget_type": AutoValue, "auto_text": "model's", "max": 1.0, "step": 0.05,
                    "tooltip": "remove nuclei whose mean foreground probability is below this; auto: the model's"},
    diameter={"widget_type": AutoValue, "auto_text": "estimate", "min": 0.5, "max": 2000.0, "start": 18.0,
              "tooltip": "typical nucleus diameter; auto: estimated from the image"},
    diameter_unit={"choices": ["px", "µm"], "label": "diameter unit", "tooltip": "µm needs the pixel size"},
    pixel_size={"widget_type": AutoValue, "auto_text": "layer scale", "min": 0.001, "max": 1000.0, "step": 0.01, "start": 0.5,
                "label": "pixel size (µm)", "tooltip": "micrometres per pixel; auto: the layer's scale when it is not 1"},
    channel={"widget_type": AutoValue, "auto_text": "all", "integer": True, "max": 63,
             "tooltip": "nuclear channel: RGB colour or index along the first dimension; auto: all channels"},
)
