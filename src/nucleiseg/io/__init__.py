"""Reading and writing images, label images, DSB folders, RLE CSVs and human-facing outputs."""

from __future__ import annotations

from nucleiseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from nucleiseg.io.dsb import (
    Sample,
    is_dsb_root,
    is_dsb_sample,
    list_samples,
    load_labels_only,
    load_sample,
    merge_masks,
)
from nucleiseg.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageReadError,
    read_image,
    read_image_shape,
    read_labels,
    to_uint8_rgb,
    write_image,
    write_labels,
)
from nucleiseg.io.geojson import to_feature_collection, write_geojson
from nucleiseg.io.stacks import Planes, read_planes, resolve_planes, write_label_stack
from nucleiseg.io.labels import InputItem, discover_inputs, load_ground_truth, load_item_gt
from nucleiseg.io.outputs import (
    difference_overlay,
    measure,
    overlay_outlines,
    write_measurements,
    write_rois,
)
from nucleiseg.io.rle import (
    labels_to_rles,
    read_rle_csv,
    rle_decode,
    rle_encode,
    rles_to_labels,
    write_rle_csv,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "InputItem",
    "Planes",
    "Sample",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "difference_overlay",
    "discover_inputs",
    "is_dsb_root",
    "is_dsb_sample",
    "labels_to_rles",
    "list_samples",
    "load_ground_truth",
    "load_item_gt",
    "load_labels_only",
    "load_sample",
    "measure",
    "merge_masks",
    "overlay_outlines",
    "read_image",
    "read_image_shape",
    "read_labels",
    "read_planes",
    "resolve_planes",
    "read_rle_csv",
    "rle_decode",
    "rle_encode",
    "rles_to_labels",
    "to_feature_collection",
    "to_uint8_rgb",
    "write_image",
    "write_geojson",
    "write_label_stack",
    "write_labels",
    "write_measurements",
    "write_rle_csv",
    "write_rois",
]
