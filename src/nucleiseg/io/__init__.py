"""Reading and writing images, label images, DSB folders, RLE CSVs and human-facing outputs.

Names are imported on first use (PEP 562), so a command imports only the readers and writers it uses.
"""

from __future__ import annotations

from nucleiseg._lazy import lazy_exports

_EXPORTS = {
    "atomic_path": "atomic",
    "atomic_write_bytes": "atomic",
    "atomic_write_text": "atomic",
    "Sample": "dsb",
    "is_dsb_root": "dsb",
    "is_dsb_sample": "dsb",
    "list_samples": "dsb",
    "load_labels_only": "dsb",
    "load_sample": "dsb",
    "merge_masks": "dsb",
    "DEFAULT_MAX_PIXELS": "images",
    "IMAGE_SUFFIXES": "images",
    "ImageReadError": "images",
    "read_image": "images",
    "read_image_shape": "images",
    "read_labels": "images",
    "to_uint8_rgb": "images",
    "write_image": "images",
    "write_labels": "images",
    "to_feature_collection": "geojson",
    "write_geojson": "geojson",
    "Planes": "stacks",
    "read_planes": "stacks",
    "resolve_planes": "stacks",
    "write_label_stack": "stacks",
    "InputItem": "labels",
    "discover_inputs": "labels",
    "load_ground_truth": "labels",
    "load_item_gt": "labels",
    "difference_overlay": "outputs",
    "measure": "outputs",
    "overlay_outlines": "outputs",
    "write_measurements": "outputs",
    "write_rois": "outputs",
    "labels_to_rles": "rle",
    "read_rle_csv": "rle",
    "rle_decode": "rle",
    "rle_encode": "rle",
    "rles_to_labels": "rle",
    "write_rle_csv": "rle",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
