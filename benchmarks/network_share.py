"""Where the default command's time goes: the network's share, and the pixels it sees per stage.

Runs :meth:`Segmenter.segment` (what ``nucleiseg segment`` runs per image) over the model's
67 DSB validation images as they are, in process, one image at a time on one thread, with the
predictor wrapped to count every network call: its stage (``estimate``: the size probe, whose
zoom-1 pass of a small image is handed on as the segmentation's; ``predict``: native passes of
larger images and rescaled passes), the pixels it saw (padded to the stride) and its seconds.
The images' own pixels (padded to the stride, what one native pass each would cost) are the
reference. One run, medians are not needed: the shares, not the seconds, are the result::

    python benchmarks/network_share.py        # writes results/network_share.json

With ``--ceiling N`` it also runs the whole default command and the naive baseline's command
(:mod:`nucleiseg.benchmark.command`, what ``nucleiseg benchmark`` runs) N times each, taking
turns, on the same images, and works out how far the speed-up over the baseline could go with
this network: the command's own start-up (its wall time minus the segmenting time in its
``run.json``) plus the work above shared out perfectly over the cores, (a) with every stage as
measured here and (b) with every stage but the network free; and the non-network seconds a 3x
speed-up would leave::

    python benchmarks/network_share.py --ceiling 3 --out benchmarks/results/speed_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nucleiseg.benchmark.command import baseline_command, run_command, segment_command
from nucleiseg.benchmark.images import validation_set
from nucleiseg.bundle import ModelBundle
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.images import read_image
from nucleiseg.io.layout import RUN_RECORD
from nucleiseg.io.labels import discover_inputs

RESULTS = Path(__file__).resolve().parent / "results"


def ceiling(folder: Path, model: str, repeats: int, network_s: float, stages_s: float, work: Path) -> dict:
    """Whole-command times of the default command and the baseline (taking turns) and the ceilings.

    ``network_s`` and ``stages_s`` are one-thread seconds measured in process over the same
    images: the network's, and every stage's (read to post-process; the write stage is added
    from the command's ``run.json``, where it ran on the command's threads).
    """
    from nucleiseg.inference.executors import available_cpus

    cores = available_cpus()
    cmds = {"baseline": baseline_command([folder], work / "baseline", model), "default": segment_command([folder], work / "default", model, "auto")}
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    inside: list[float] = []  # each default run's own segmenting time (its run.json)
    write: list[float] = []  # and its write stage, summed over the images
    for _ in range(repeats):
        for name, cmd in cmds.items():
            walls[name] += run_command(cmd, work / name, 1)["runs"]
            if name == "default":
                run = json.loads((work / name / RUN_RECORD).read_text(encoding="utf-8"))
                inside.append(float(run["summary"]["seconds"]))
                write.append(sum(float(i["timings"].get("write", 0.0)) for i in run["images"]))
    med = {name: statistics.median(v) for name, v in walls.items()}
    start = med["default"] - statistics.median(inside)  # imports, model load, discovery, run.json
    base, work_s = med["baseline"], stages_s + statistics.median(write)
    target = base / 3.0
    return {
        "repeats": repeats, "cores": cores,
        "baseline_command_s": round(base, 3), "default_command_s": round(med["default"], 3),
        "speedup": round(statistics.median(b / d for b, d in zip(walls["baseline"], walls["default"], strict=True)), 3),
        "default_start_s": round(start, 3), "default_segmenting_s": round(statistics.median(inside), 3),
        "one_thread_s": {"network": round(network_s, 2), "all_stages": round(work_s, 2), "other_stages": round(work_s - network_s, 2)},
        "ceiling_stages_as_measured": round(base / (start + work_s / cores), 2),
        "ceiling_network_only": round(base / (start + network_s / cores), 2),
        "for_3x": {"command_s": round(target, 3),
                   "other_stages_s_allowed": round((target - start) * cores - network_s, 2)},
        "runs": {name: [round(w, 3) for w in v] for name, v in {**walls, "inside": inside, "write": write}.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and write the JSON; print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", type=Path, default=RESULTS / "network_share.json")
    parser.add_argument("--ceiling", type=int, default=0, metavar="N",
                        help="also time the whole default and baseline commands N times each and work out the speed-up's ceiling")
    args = parser.parse_args(argv)

    seg = Segmenter.from_pretrained(args.model, threads=1)
    stride = seg.stride
    network = seg.predictor
    assert network is not None
    calls: list[tuple[str, int, float]] = []
    stage = ["predict"]

    def counted(batch: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = network(batch)
        calls.append((stage[0], int(batch.shape[0] * batch.shape[2] * batch.shape[3]), time.perf_counter() - t))
        return out

    def estimate(*a: object, **k: object):  # type: ignore[no-untyped-def]
        stage[0] = "estimate"
        try:
            return Segmenter.estimate_size(seg, *a, **k)  # type: ignore[arg-type]
        finally:
            stage[0] = "predict"

    seg.predictor = counted
    seg.estimate_size = estimate  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="nucleiseg-share-") as tmp:
        folder = validation_set(ModelBundle.open(args.model).folder, Path(tmp))
        if folder is None:
            print("error: the model's validation images are not here", file=sys.stderr)
            return 1
        items = discover_inputs([folder])
        own = 0
        rescaled = 0
        t0 = time.perf_counter()
        for item in items:
            image = read_image(item.image_path)
            h, w = image.shape[:2]
            own += (-(-h // stride) * stride) * (-(-w // stride) * stride)
            rescaled += seg.segment(image, keep_probabilities=False).scale != 1.0
        total = time.perf_counter() - t0
        network_s = sum(c[2] for c in calls)
        limits = ceiling(folder, args.model, args.ceiling, network_s, total, Path(tmp) / "commands") if args.ceiling > 0 else None
    by_stage = {
        name: {"calls": sum(1 for c in calls if c[0] == name), "megapixels": round(sum(c[1] for c in calls if c[0] == name) / 1e6, 2),
               "seconds": round(sum(c[2] for c in calls if c[0] == name), 2)}
        for name in ("estimate", "predict")
    }
    result = {
        "command": "python benchmarks/network_share.py" + (f" --model {args.model}" if args.model != "default" else "")
        + (f" --ceiling {args.ceiling}" if args.ceiling > 0 else ""),
        "model": args.model, "images": len(items), "rescaled": int(rescaled),
        "images_megapixels": round(own / 1e6, 2), "network": by_stage,
        "network_megapixels": round(sum(c[1] for c in calls) / 1e6, 2),
        "network_seconds": round(network_s, 2), "total_seconds": round(total, 2),
        "network_share": round(network_s / total, 3),
    }
    if limits is not None:
        result["ceiling"] = limits
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
