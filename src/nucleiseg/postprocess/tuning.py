"""Grid search of post-processing settings on validation probabilities."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.config import PostprocessConfig
from nucleiseg.postprocess.watershed import (
    labels_from_parts,
    marker_probability,
    remove_small_mask,
    threshold_mask,
)

__all__ = ["REFINE", "default_grid", "tune_postprocess"]

#: Settings searched one at a time after the grid, on top of its best combination: the object
#: confidence filter (mean foreground probability of each object; 0 keeps all).
REFINE: dict[str, list[Any]] = {"min_confidence": [0.0, 0.75, 0.8, 0.85, 0.88, 0.9]}


def default_grid(channels: int, base: PostprocessConfig | None = None) -> dict[str, list[Any]]:
    """A modest search grid (at most 60 combinations) for a model with ``channels`` outputs.

    Contour models (``channels >= 2``) search ``threshold`` x ``marker_threshold`` x
    ``min_size``; binary models search ``threshold`` x ``marker_distance`` x ``min_size``.
    """
    base = base or PostprocessConfig()
    sizes = sorted({max(1, base.min_size // 2), base.min_size, base.min_size * 2})
    grid: dict[str, list[Any]] = {"threshold": [0.3, 0.4, 0.5, 0.6, 0.7]}
    if channels >= 2:
        grid["marker_threshold"] = [0.3, 0.5, 0.65, 0.8]
    else:
        grid["marker_distance"] = [0.25, 0.35, 0.5]
    grid["min_size"] = sizes
    return grid


def _check_inputs(probs_list: Sequence[np.ndarray], gt_list: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate the pairs; return float32 ``(K, H, W)`` probabilities without NaN."""
    if len(probs_list) != len(gt_list):
        raise ValueError(f"probs_list has {len(probs_list)} items but gt_list has {len(gt_list)}")
    if len(probs_list) == 0:
        raise ValueError("tune_postprocess needs at least one image")
    out = []
    for i, (probs, gt) in enumerate(zip(probs_list, gt_list, strict=True)):
        probs = np.asarray(probs)
        if probs.ndim == 2:
            probs = probs[None]
        if probs.ndim != 3 or probs.shape[1:] != np.shape(gt):
            raise ValueError(f"item {i}: probs {probs.shape} do not match labels {np.shape(gt)}")
        out.append(np.nan_to_num(probs.astype(np.float32, copy=False), nan=0.0))
    if len({p.shape[0] for p in out}) != 1:
        raise ValueError("all probability maps must have the same number of channels")
    return out


def tune_postprocess(
    probs_list: Sequence[np.ndarray],
    gt_list: Sequence[np.ndarray],
    base_cfg: PostprocessConfig | None = None,
    grid: dict[str, Iterable[Any]] | None = None,
    progress: bool = False,
    refine: dict[str, Iterable[Any]] | None = None,
) -> tuple[PostprocessConfig, float, pd.DataFrame]:
    """Find the post-processing settings that maximise the mean competition score.

    Every combination of the grid's values (applied on top of ``base_cfg``) is scored, and so
    is ``base_cfg`` itself, so the result is never worse than the starting point on this data.
    Then each setting of ``refine`` is searched on its own on top of the best so far (a line
    search: its values do not multiply the grid). Foreground masks are computed once per
    distinct threshold setting and image.

    Parameters
    ----------
    probs_list : sequence of np.ndarray
        ``(K, H, W)`` probabilities, one per validation image.
    gt_list : sequence of np.ndarray
        ``(H, W)`` ground-truth label images, in the same order.
    base_cfg : PostprocessConfig, optional
        Settings not in the grid are taken from here.
    grid : dict, optional
        ``{PostprocessConfig field: values}``; :func:`default_grid` when omitted.
    progress : bool
        Show a progress bar over the combinations (stderr).
    refine : dict, optional
        ``{PostprocessConfig field: values}`` searched one field at a time after the grid;
        :data:`REFINE` when omitted together with ``grid``, none when only ``grid`` is given.

    Returns
    -------
    best_cfg : PostprocessConfig
        The best settings.
    best_score : float
        Their mean competition score.
    table : pandas.DataFrame
        One row per combination: the grid values, ``score`` (mean) and ``score_std``, best first.
    """
    base = base_cfg or PostprocessConfig()
    probs_all = _check_inputs(probs_list, gt_list)
    grid_lists, refine_lists, combos = _search_space(probs_all[0].shape[0], base, grid, refine)
    keys = list(grid_lists)
    columns = [*keys, *(k for k in refine_lists if k not in keys)]
    best_cfg, best_score, rows = _search(_Scorer(probs_all, gt_list), base, combos, refine_lists, columns, progress)
    table = pd.DataFrame(sorted(rows, key=lambda r: -r["score"]))
    return best_cfg, best_score, table


def _search_space(
    channels: int,
    base: PostprocessConfig,
    grid: dict[str, Iterable[Any]] | None,
    refine: dict[str, Iterable[Any]] | None,
) -> tuple[dict[str, list[Any]], dict[str, list[Any]], list[dict[str, Any]]]:
    """The grid and the line-search settings (defaults filled in, checked) and the grid's combinations.

    ``base``'s own values of the grid's fields come first when the grid does not hold them.
    """
    if refine is None:
        refine = REFINE if grid is None else {}
    grid_lists = {k: list(v) for k, v in (grid or default_grid(channels, base)).items()}
    refine_lists = {k: list(v) for k, v in refine.items()}
    fields = {f.name for f in dataclasses.fields(PostprocessConfig)}
    unknown = (set(grid_lists) | set(refine_lists)) - fields
    if unknown:
        raise ValueError(f"unknown PostprocessConfig field(s) in grid: {', '.join(sorted(unknown))}")
    if any(len(v) == 0 for v in [*grid_lists.values(), *refine_lists.values()]):
        raise ValueError("every grid entry needs at least one value")
    keys = list(grid_lists)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid_lists.values())]
    base_params = {k: getattr(base, k) for k in keys}
    if base_params not in combos:
        combos.insert(0, base_params)
    return grid_lists, refine_lists, combos


class _Scorer:
    """Mean and spread of the competition score of one setting over all images.

    Foreground masks are computed once per distinct threshold setting (and ``min_size``) and image.
    """

    def __init__(self, probs_all: list[np.ndarray], gt_list: Sequence[np.ndarray]) -> None:
        from nucleiseg.metrics import competition_score

        self.competition_score = competition_score
        self.probs_all, self.gt_list = probs_all, gt_list
        self.cores = [marker_probability(p) if p.shape[0] >= 2 else None for p in probs_all]
        self.raw_cache: dict[tuple[int, Any], np.ndarray] = {}
        self.mask_cache: dict[tuple[int, Any, int], np.ndarray] = {}

    def mask_for(self, i: int, cfg: PostprocessConfig) -> np.ndarray:
        """The foreground mask of image ``i`` under ``cfg``."""
        key = (i, (cfg.threshold_method, cfg.threshold, cfg.fill_holes))
        if key not in self.raw_cache:
            self.raw_cache[key] = threshold_mask(self.probs_all[i][0], cfg)
        full_key = (*key, cfg.min_size)
        if full_key not in self.mask_cache:
            self.mask_cache[full_key] = remove_small_mask(self.raw_cache[key], cfg.min_size)
        return self.mask_cache[full_key]

    def __call__(self, cfg: PostprocessConfig) -> tuple[float, float]:
        scores = [
            self.competition_score(gt, labels_from_parts(probs, self.mask_for(i, cfg), cfg, self.cores[i]))
            for i, (probs, gt) in enumerate(zip(self.probs_all, self.gt_list, strict=True))
        ]
        return float(np.mean(scores)), float(np.std(scores))


def _search(
    score: _Scorer,
    base: PostprocessConfig,
    combos: list[dict[str, Any]],
    refine: dict[str, list[Any]],
    columns: list[str],
    progress: bool,
) -> tuple[PostprocessConfig, float, list[dict[str, Any]]]:
    """Score every combination on top of ``base``, then line-search each ``refine`` field from the best so far.

    Returns the best settings, their mean score and one row (``columns``, ``score``,
    ``score_std``) per setting scored.
    """
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    best_cfg, best_score = base, -1.0
    bar = tqdm(total=len(combos) + sum(len(v) for v in refine.values()), desc="tuning post-processing",
               unit="combo", disable=not progress)

    def consider(cfg: PostprocessConfig) -> None:
        nonlocal best_cfg, best_score
        mean, std = score(cfg)
        rows.append({k: getattr(cfg, k) for k in columns} | {"score": mean, "score_std": std})
        if mean > best_score:
            best_cfg, best_score = cfg, mean

    for params in combos:
        consider(dataclasses.replace(base, **params))
        bar.update()
    for key, values in refine.items():
        start = best_cfg
        for value in values:
            if getattr(start, key) != value:  # the start itself is already scored
                consider(dataclasses.replace(start, **{key: value}))
            bar.update()
    bar.close()
    return best_cfg, best_score, rows
