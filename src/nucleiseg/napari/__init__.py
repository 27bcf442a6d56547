"""napari plugin (``pip install "nucleiseg[napari]"``): a *Segment nuclei* widget, a reader and a
writer for ``*_masks.tif`` label images, and the bundled examples as sample data.

The npe2 manifest is ``napari.yaml`` beside this file (entry point ``napari.manifest``). The
modules import napari only inside the functions that need it, so the pure parts
(:func:`nucleiseg.napari._widget.segment_layer_data`, the reader and the writer) run without Qt.
"""
