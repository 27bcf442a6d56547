"""Stitch one output tile of a block-wise run from the kept nuclei of its 3x3 neighbourhood.

Rule 3 of :mod:`nucleiseg.distributed.blocks` (merge across borders): pairs of nuclei from
different tiles that cover the same pixels (overlap >= half of the smaller one) are linked, and
each connected component of that graph keeps one member, the largest (ties: the lowest id).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Box", "assemble"]

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def _intersect(a: Box, b: Box) -> Box | None:
    box = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return box if box[0] < box[1] and box[2] < box[3] else None


def _crop(labels: np.ndarray, ext: Box, box: Box) -> np.ndarray:
    return labels[box[0] - ext[0] : box[1] - ext[0], box[2] - ext[2] : box[3] - ext[2]]


def assemble(core: Box, parts: list[tuple[int, Box, np.ndarray]], cap: int) -> np.ndarray:
    """Build one output tile from the kept nuclei of its 3x3 neighbourhood (see the module notes)."""
    parts = sorted(parts, key=lambda p: p[0])
    ids, areas = [], []
    for index, _, labels in parts:
        counts = np.bincount(labels.ravel())
        local = np.nonzero(counts)[0]
        local = local[local > 0]
        ids.append(local.astype(np.int64) + index * cap)
        areas.append(counts[local])
    nodes = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    area = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    edges = [np.zeros((2, 0), np.int64)]
    for (ia, ea, la), (ib, eb, lb) in combinations(parts, 2):
        box = _intersect(ea, eb)
        if box is None:
            continue
        ca, cb = _crop(la, ea, box), _crop(lb, eb, box)
        both = (ca > 0) & (cb > 0)
        if not both.any():
            continue
        stacked = np.stack([ca[both].astype(np.int64) + ia * cap, cb[both].astype(np.int64) + ib * cap])
        pairs, shared = np.unique(stacked, axis=1, return_counts=True)
        pa, pb = np.searchsorted(nodes, pairs[0]), np.searchsorted(nodes, pairs[1])
        same = 2 * shared >= np.minimum(area[pa], area[pb])
        edges.append(np.stack([pa[same], pb[same]]))
    edge = np.concatenate(edges, axis=1)
    n = nodes.size
    graph = coo_matrix((np.ones(edge.shape[1]), (edge[0], edge[1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # One survivor per component: the largest member, ties to the lowest id (nodes are sorted).
    order = np.lexsort((nodes, -area, component))
    first = np.ones(n, bool)
    first[1:] = component[order][1:] != component[order][:-1]
    survivor = np.zeros(n, bool)
    survivor[order[first]] = True
    kept = nodes[survivor]  # sorted, as nodes are
    out = np.zeros((core[1] - core[0], core[3] - core[2]), np.int32)
    for index, ext, labels in parts:
        box = _intersect(ext, core)
        if box is None:
            continue
        crop = _crop(labels, ext, box)
        glob = np.arange(int(labels.max()) + 1, dtype=np.int64) + index * cap
        lut = np.where(np.isin(glob, kept), glob, 0)
        lut[0] = 0
        target = out[box[0] - core[0] : box[1] - core[0], box[2] - core[2] : box[3] - core[2]]
        free = target == 0
        target[free] = lut[crop[free]]
    return out
