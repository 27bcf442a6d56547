"""Build an ensemble run folder from trained run folders (``nucleiseg ensemble``).

The ensemble (:class:`~nucleiseg.models.ensemble.Ensemble`) averages its members'
probabilities; its folder is an ordinary run folder, so ``nucleiseg validate --tune --suite``,
``nucleiseg export`` and bundling treat it like any trained model. Its members must have been
trained for the same task: the same input normalisation, targets, channels and validation
split (so that tuning on the split never sees a member's training images).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nucleiseg.config import ModelBundleConfig, ModelConfig, load_json, save_json, to_dict
from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.models.ensemble import Ensemble
from nucleiseg.training.checkpoint import file_hash, load_model, save_weights

#: Settings every member must share (fields of ModelBundleConfig).
_SAME = ("normalize", "targets")


def make_ensemble(runs: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None) -> Path:
    """Write a run folder whose model is the mean of the models in ``runs``.

    The folder holds ``config.json`` (model ``ensemble`` with the members' architectures; the
    first member's inference and post-processing settings, to be re-tuned with
    ``nucleiseg validate --tune``), ``weights.safetensors`` (every member's weights under
    ``members.<i>.``), the common ``split.json``, the first member's ``train.json`` and
    ``size_model.json`` (if any: fitted on that member's probes, not the ensemble's; refit it
    with ``python -m nucleiseg.inference.size_fit --model OUT`` where that matters), and
    ``report.json`` whose ``members`` name each member with the hash of its weights, its
    architecture, its recipe (``train.json``) and its training report (for the model card).

    Raises
    ------
    ValueError
        Fewer than two runs, or runs that differ in normalisation, targets, channels or
        validation split.
    """
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least 2 run folders, got {len(runs)}")
    names = [str(r) for r in runs] if names is None else [str(n) for n in names]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    configs = [load_json(ModelBundleConfig, r / "config.json") for r in runs]
    first = configs[0]
    for run, cfg in zip(runs[1:], configs[1:], strict=True):
        for key in _SAME:
            if to_dict(getattr(cfg, key)) != to_dict(getattr(first, key)):
                raise ValueError(f"{run}: {key} differs from {runs[0]}'s; members must be trained for the same input and targets")
    splits = [json.loads((r / "split.json").read_text()) for r in runs]
    if any(s["val"] != splits[0]["val"] for s in splits[1:]):
        raise ValueError("the runs were validated on different splits; tuning the ensemble would see training images")

    members = [load_model(cfg.model, r / "weights.safetensors") for r, cfg in zip(runs, configs, strict=True)]
    model = Ensemble(members)  # refuses members of other channel counts, before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {"members": [{"arch": c.model.arch, "params": dict(c.model.params)} for c in configs]}
    config = ModelBundleConfig(
        name=out.name,
        model=ModelConfig(arch="ensemble", in_channels=first.model.in_channels,
                          out_channels=first.model.out_channels, params=params),
        normalize=first.normalize, targets=first.targets, postprocess=first.postprocess, infer=first.infer,
        version=first.version,
    )
    save_weights(model, out / "weights.safetensors", metadata={"arch": "ensemble", "members": str(len(runs))})
    save_json(config, out / "config.json")
    for name in ("split.json", "train.json", "size_model.json"):
        if (runs[0] / name).exists():
            shutil.copyfile(runs[0] / name, out / name)
    record = {"members": [_member(r, c, n) for r, c, n in zip(runs, configs, names, strict=True)]}
    atomic_write_text(out / "report.json", json.dumps(record, indent=1))
    return out


def _member(run: Path, config: ModelBundleConfig, name: str) -> dict[str, Any]:
    """What the ensemble's ``report.json`` records of one member."""
    def read(name: str) -> dict[str, Any]:
        return json.loads((run / name).read_text()) if (run / name).is_file() else {}

    return {
        "run": name, "weights_sha256": file_hash(run / "weights.safetensors"),
        "model": to_dict(config.model), "train": read("train.json"), "report": read("report.json"),
    }
