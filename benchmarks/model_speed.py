"""Size and CPU speed of every architecture in its default configuration.

Two modes share this file:

* ``speed`` (default): parameter count, fp32 safetensors size, and the median CPU forward
  time of a 1x3x256x256 input under ``torch.inference_mode`` -> ``results/model_speed.json``;
* ``train``: training throughput in images/s, one Adam step on 8x3x256x256 random crops with a
  BCE-with-logits loss per step -> ``results/train_throughput.json``
  (``benchmarks/train_throughput.py`` runs this mode).

Both pin ``torch.set_num_threads`` (2 by default), run warm-up iterations, and report medians.
``--params`` passes keyword arguments to every model (e.g. ``'{"base_channels": 8}'``).
``--amp`` (train mode) times each model twice in the same run, in float32 and under bfloat16
autocast as ``nucleiseg train`` uses it, and reports the ratio ->
``results/train_throughput_amp.json``.

Usage::

    python benchmarks/model_speed.py [--mode speed|train] [--repeats N] [--threads T] [--models a,b]
        [--channels-last] [--params JSON] [--amp] [--size N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from nucleiseg.io.atomic import atomic_write_text
from nucleiseg.models import count_parameters, create_model, list_models

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(step: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times; return sorted durations."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)


def _prepare(model: torch.nn.Module, x: torch.Tensor, channels_last: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """Optionally switch model and input to the channels-last memory format."""
    if not channels_last:
        return model, x
    return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def measure_speed(
    name: str, size: int, warmup: int, repeats: int, channels_last: bool = False, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Parameters, fp32 safetensors bytes and forward milliseconds of model ``name``."""
    torch.manual_seed(0)
    model, x = _prepare(create_model(name, **(params or {})).eval(), torch.rand(1, 3, size, size), channels_last)
    with torch.inference_mode():
        times = _median_seconds(lambda: model(x), warmup, repeats)
    return {
        "params": count_parameters(model),
        "safetensors_bytes": len(safetensors_bytes({k: v.contiguous() for k, v in model.state_dict().items()})),
        "stride": model.stride,
        "forward_ms_median": round(1000 * statistics.median(times), 1),
        "forward_ms_min": round(1000 * times[0], 1),
    }


def measure_train(
    name: str, batch: int, size: int, warmup: int, repeats: int, channels_last: bool = False,
    params: dict[str, Any] | None = None, bf16: bool = False,
) -> dict[str, Any]:
    """Training images/s of model ``name`` (forward, backward, Adam step) on random crops.

    ``bf16`` runs the forward pass under CPU bfloat16 autocast with a float32 loss, as
    ``nucleiseg train`` does with ``amp``.
    """
    torch.manual_seed(0)
    model, x = _prepare(create_model(name, **(params or {})).train(), torch.rand(batch, 3, size, size), channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    target = (torch.rand(batch, 3, size, size) > 0.5).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss_fn(logits.float(), target).backward()
        optimizer.step()

    times = _median_seconds(step, warmup, repeats)
    median = statistics.median(times)
    return {
        "params": count_parameters(model),
        "step_s_median": round(median, 3),
        "images_per_s": round(batch / median, 2),
        "images_per_s_best": round(batch / times[0], 2),
    }


def environment(threads: int) -> dict[str, Any]:
    """Versions and machine facts stored beside the numbers."""
    return {
        "torch": torch.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None, default_mode: str = "speed") -> dict[str, Any]:
    """Parse arguments, measure every model, print a table and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["speed", "train"], default=default_mode)
    parser.add_argument("--models", default=",".join(list_models()), help="comma-separated architecture names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square input side")
    parser.add_argument("--batch", type=int, default=8, help="train mode batch size")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 2 speed, 1 train)")
    parser.add_argument("--repeats", type=int, default=None, help="timed iterations (default 7 speed, 3 train)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--params", type=json.loads, default={}, help="JSON keyword arguments for every model")
    parser.add_argument("--amp", action="store_true", help="train mode: float32 and bfloat16 autocast, same run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.amp and args.mode != "train":
        parser.error("--amp needs --mode train")
    train = args.mode == "train"
    warmup = args.warmup if args.warmup is not None else (1 if train else 2)
    repeats = args.repeats if args.repeats is not None else (3 if train else 7)
    stem = ("train_throughput" if train else "model_speed") + ("_channels_last" if args.channels_last else "")
    stem += "_amp" if args.amp else ""
    out = args.out or RESULTS / f"{stem}.json"
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        if train and args.amp:
            pair = {
                dtype: measure_train(name, args.batch, args.size, warmup, repeats, args.channels_last, args.params, dtype == "bfloat16")
                for dtype in ("float32", "bfloat16")
            }
            ratio = round(pair["bfloat16"]["images_per_s"] / pair["float32"]["images_per_s"], 2)
            results[name] = {**pair, "bfloat16_speedup": ratio}
            print(
                f"{name:8s} float32 {pair['float32']['images_per_s']:7.2f} images/s  bfloat16 "
                f"{pair['bfloat16']['images_per_s']:7.2f} images/s  ({ratio:.2f}x)", flush=True,
            )
        elif train:
            results[name] = measure_train(name, args.batch, args.size, warmup, repeats, args.channels_last, args.params)
            r = results[name]
            print(f"{name:8s} {r['images_per_s']:7.2f} images/s  (step {r['step_s_median']:.2f} s)", flush=True)
        else:
            r = results[name] = measure_speed(name, args.size, warmup, repeats, args.channels_last, args.params)
            print(
                f"{name:8s} {r['params'] / 1e6:6.2f} M params  {r['safetensors_bytes'] / 2**20:6.1f} MiB  "
                f"forward {r['forward_ms_median']:7.1f} ms (min {r['forward_ms_min']:.1f})",
                flush=True,
            )
    setup = {"batch": args.batch, "optimizer": "adam", "loss": "bce_with_logits"} if train else {"batch": 1}
    report = {
        "mode": args.mode,
        "input": [args.size, args.size],
        **setup,
        "channels_last": args.channels_last,
        "model_params": args.params,
        "warmup": warmup,
        "repeats": repeats,
        "environment": environment(args.threads),
        "models": results,
    }
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
