"""``nucleiseg`` command line: the parser of every sub-command and the entry point.

Each sub-command lives in its own module (parser + command; heavy imports happen inside commands).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nucleiseg import __version__
from nucleiseg.cli import benchmark as _bench
from nucleiseg.cli import ensemble as _ensemble
from nucleiseg.cli import evaluate as _evaluate
from nucleiseg.cli import export as _export
from nucleiseg.cli import segment as _segment
from nucleiseg.cli import survey as _inspect
from nucleiseg.cli import train as _train
from nucleiseg.cli import validate as _validate
from nucleiseg.cli.serve import add_parser as _add_serve
from nucleiseg.cli.train import load_recipe
from nucleiseg.extras import extra_for

__all__ = ["build_parser", "load_recipe", "main"]

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def build_parser() -> argparse.ArgumentParser:
    """The full ``nucleiseg`` parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="nucleiseg",
        description="Find every cell nucleus in 2D microscopy images.",
    )
    parser.add_argument("--version", action="version", version=f"nucleiseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (_segment.add_parser, _evaluate.add_parser, _inspect.add_parser, _train.add_parser, _validate.add_parser, _add_serve,
                _export.add_parser, _ensemble.add_parser, _bench.add_parser)
    for add in commands:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nucleiseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted: finished outputs are complete, nothing partial was written", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = extra_for(exc)
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
