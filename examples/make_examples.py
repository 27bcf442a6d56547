"""Copy a few real DSB 2018 training images (CC0) into examples/, with their label images.

Run from the repository root: ``python examples/make_examples.py [DSB_ROOT]``.
Each example is ``examples/<name>.png`` plus ``examples/<name>_masks.tif`` (the Cellpose-style
pair layout that ``nucleiseg`` reads), so the README demo needs nothing outside the repo.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from nucleiseg.io.dsb import load_sample
from nucleiseg.io.images import write_labels

EXAMPLES = {
    "fluo_small": "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "fluo_wide": "10ba6cbee4873b32d5626a118a339832ba2b15d8643f66dddcd7cb2ec80fbc28",
    "brightfield": "091944f1d2611c916b98c020bd066667e33f4639159b2a92407fe5a40788856d",
    "tissue_he": "00ae65c1c6631ae6f2be1a449902976e6eb8483bf6b0740d00530220832c6d3e",
    "tissue_dense": "4d14a3629b6af6de86d850be236b833a7bfcbf6d8665fd73c6dc339e06c14607",
}


def main() -> None:
    """Write the example pairs and SOURCES.md."""
    here = Path(__file__).resolve().parent
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parents[1] / "shared/data/dsb2018/stage1_train"
    lines = ["# Example images\n", "Copied from DSB 2018 stage1_train (CC0) by `make_examples.py`.\n", "",
             "| file | DSB image id | nuclei |", "|---|---|---|"]
    for name, image_id in EXAMPLES.items():
        sample = load_sample(root / image_id)
        shutil.copyfile(sample.image_path, here / f"{name}.png")
        write_labels(here / f"{name}_masks.tif", sample.labels)
        lines.append(f"| {name}.png | {image_id} | {int(sample.labels.max())} |")
    (here / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
