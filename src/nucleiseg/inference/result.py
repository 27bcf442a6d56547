"""What :class:`~nucleiseg.inference.segmenter.Segmenter` returns: :class:`Result` and :class:`SizeFinding`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from nucleiseg.counting import label_sizes

__all__ = ["Result", "SizeFinding"]


@dataclass
class Result:
    """The segmentation of one image.

    Attributes
    ----------
    labels : ndarray of int32, shape (H, W)
        Instance labels 1..n, 0 is background, at the input's resolution.
    probabilities : ndarray of float32, shape (K, H, W), or None
        Network outputs at the input's resolution (None for the classical model and for an
        image segmented block-wise, see
        :meth:`~nucleiseg.inference.segmenter.Segmenter.segment_blockwise`).
    diameter : float or None
        Estimated (or given) typical nucleus diameter in input pixels.
    scale : float
        Factor the image was rescaled by before the network (1.0 = native).
    timings : dict
        Seconds per stage (``estimate``: finding the nucleus size, when it was estimated).
    diameter_source : str or None
        Where ``diameter`` came from: ``"given"`` (``infer.diameter``), ``"size_model"`` (the
        model's size estimator, :mod:`nucleiseg.inference.size`), ``"first_pass"`` (objects of a
        native pass, for models without a size estimator), ``"labels"`` (classical model), or
        None when there is no diameter.
    probe_centre : tuple of int or None
        ``(y, x)`` the size estimator's views were centred on when the image's centre showed no
        nucleus and it looked elsewhere (:func:`~nucleiseg.inference.size.busiest_centre`); None
        otherwise.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    diameter: float | None
    scale: float
    timings: dict[str, float] = field(default_factory=dict)
    diameter_source: str | None = None
    probe_centre: tuple[int, int] | None = None

    @property
    def count(self) -> int:
        """Number of nuclei found (distinct labels other than 0; counted in linear time, labels are >= 0).

        Counted in chunks (:func:`~nucleiseg.counting.label_sizes`): a whole-image
        ``np.bincount`` would copy the labels to 8 bytes per pixel.
        """
        if self.labels.size == 0:
            return 0
        return int(np.count_nonzero(label_sizes(self.labels)[1:]))


class SizeFinding(NamedTuple):
    """What :meth:`~nucleiseg.inference.segmenter.Segmenter.estimate_size` found.

    Attributes
    ----------
    diameter : float or None
        Median nucleus diameter in input pixels (None when no nucleus is seen).
    native : np.ndarray or None
        Native-resolution probabilities of the whole image, exactly as
        :meth:`~nucleiseg.inference.segmenter.Segmenter.segment` computes them, when the
        estimate computed them on the way (reused at native scale).
    labels : np.ndarray or None
        Their labels, when the estimate computed them too.
    source : str or None
        ``"size_model"`` or ``"first_pass"``.
    gated : bool
        True when the size model's gate read the diameter off the zoom-1 view alone.
    centre : tuple of int or None
        Where the size model's views were centred when not on the image's centre.
    """

    diameter: float | None
    native: np.ndarray | None
    labels: np.ndarray | None
    source: str | None
    gated: bool = False
    centre: tuple[int, int] | None = None
