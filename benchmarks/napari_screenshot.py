"""Screenshot of the napari *Segment nuclei* widget after segmenting an example (for the README).

Run under a virtual display: ``xvfb-run -a python benchmarks/napari_screenshot.py``
(needs ``pip install -e ".[napari]"`` and ``bash .ci/install-gui.sh``). Writes
``docs/figures/napari_widget.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Open the example, run the widget with the default model and save the window."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="fluo_wide", help="example image name (default fluo_wide)")
    parser.add_argument("-o", "--out", default=str(REPO / "docs" / "figures" / "napari_widget.png"))
    args = parser.parse_args()
    if importlib.util.find_spec("PyQt6") is not None:
        os.environ.setdefault("QT_API", "pyqt6")  # Qt 6; qtpy would pick PyQt5 first where both are installed
    import napari
    from qtpy.QtWidgets import QApplication

    from nucleiseg.io import read_image

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 900)
    image = read_image(REPO / "examples" / f"{args.sample}.png")
    viewer.add_image(image, name=args.sample, rgb=image.ndim == 3)
    _, widget = viewer.window.add_plugin_dock_widget("nucleiseg", "Segment nuclei")
    widget.image.value = viewer.layers[args.sample]
    widget()
    deadline = time.monotonic() + 300
    while len(viewer.layers) < 2 and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    labels = viewer.layers[-1]
    labels.contour = 2
    viewer.layers.selection.active = labels
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):  # start-up notices
        toast.close()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()  # fit the image to the canvas the dock widget left
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}: {int(labels.data.max())} nuclei, features {list(labels.features.columns)[:5]}...")
    viewer.close()


if __name__ == "__main__":
    main()
