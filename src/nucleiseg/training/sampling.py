"""Style-balanced sampling of training images: image-style clusters and per-image weights.

Used by :class:`~nucleiseg.training.data.CropDataset` (``oversample``) and summarised in a run's
``report.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from nucleiseg.transforms import image_style_features, style_clusters

if TYPE_CHECKING:  # data.py imports this module
    from nucleiseg.training.data import TrainingSample


def sample_style_clusters(samples: list[TrainingSample], n_clusters: int = 4) -> np.ndarray:
    """Image-style cluster of every sample (all 0 when there are fewer than ``2 * n_clusters``).

    The clusters are computed on the whole (combined) training set, so images of an extra data
    set join the cluster of their kind (e.g. BBBC039's Hoechst images join DSB's fluorescence).
    """
    if len(samples) < n_clusters * 2:
        return np.zeros(len(samples), dtype=np.int64)
    features = np.stack([image_style_features(s.image.astype(np.float32)) for s in samples])
    return style_clusters(features, n_clusters)


def weights_from_clusters(clusters: np.ndarray) -> np.ndarray:
    """Sampling probabilities giving every cluster the same total weight (split evenly inside)."""
    counts = np.bincount(clusters, minlength=clusters.max() + 1).astype(np.float64)
    weights = 1.0 / counts[clusters]
    return weights / weights.sum()


def sampling_weights(samples: list[TrainingSample], n_clusters: int = 4) -> np.ndarray:
    """Per-image sampling probabilities that give every image-style cluster equal weight."""
    if len(samples) < n_clusters * 2:
        return np.full(len(samples), 1 / len(samples))
    return weights_from_clusters(sample_style_clusters(samples, n_clusters))


def sampling_summary(samples: list[TrainingSample], clusters: np.ndarray, weights: np.ndarray) -> list[dict[str, Any]]:
    """Per style cluster: its images by source (the id prefix before ``/``; ``dsb`` without one)
    and the share of crops drawn from it, for ``report.json``."""
    out = []
    for k in range(int(clusters.max()) + 1 if len(clusters) else 0):
        members = np.flatnonzero(clusters == k)
        sources: dict[str, int] = {}
        for i in members:
            source = samples[i].id.split("/", 1)[0] if "/" in samples[i].id else "dsb"
            sources[source] = sources.get(source, 0) + 1
        out.append({"cluster": k, "images": sources, "share": round(float(weights[members].sum()), 4)})
    return out
