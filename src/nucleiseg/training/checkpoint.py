"""Weights and resumable training state, stored as safetensors plus JSON (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nucleiseg.bundle import file_hash  # noqa: F401  (re-exported: training.file_hash)
from nucleiseg.io.atomic import atomic_path, atomic_write_text


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save a model's state dict as safetensors, atomically.

    Tensors are made contiguous and moved to the CPU so the file is identical whatever device
    trained the model.
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors weights into ``model`` with a strict key check.

    Raises
    ------
    ValueError
        If the file's tensors do not fit the model (missing or unexpected keys, wrong shapes).
    """
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path}: weights do not fit the model ({first})") from None
    return model


def load_model(model_config: Any, path: str | Path) -> torch.nn.Module:
    """Build the network a :class:`~nucleiseg.config.ModelConfig` describes and load its weights.

    ``weights_path`` (a pretrained-encoder file used only when training starts) is dropped: the
    full state dict replaces the encoder anyway, and that file need not exist any more.
    """
    from nucleiseg.models import create_model

    params = {k: v for k, v in model_config.params.items() if k != "weights_path"}
    model = create_model(model_config.arch, model_config.in_channels, model_config.out_channels, **params)
    return load_weights(model, path)


def save_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    info: dict[str, Any],
) -> None:
    """Save everything needed to resume: weights, optimizer tensors, scheduler and loop state.

    Model weights and optimizer tensors go into one safetensors file (keys ``model.*`` and
    ``optim.<param index>.<name>``); scalar optimizer state, hyper-parameters, the scheduler's
    state and ``info`` (epoch, best score, history) into a JSON file beside it
    (``<path>.json``).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value) and name != "step":
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = float(value.item() if torch.is_tensor(value) else value)
    meta = {
        "optimizer_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "info": info,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(Path(str(path) + ".json"), json.dumps(meta, indent=1, default=float))


def load_training_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore a state written by :func:`save_training_state`; returns its ``info`` dict."""
    tensors = load_file(str(path))
    with open(str(path) + ".json", encoding="utf-8") as fh:
        meta = json.load(fh)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["optimizer_scalars"].items():
        for name, value in values.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(value)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta["info"]
