"""``nucleiseg`` command line: the parser of every sub-command and the entry point.

Each sub-command lives in its own module (parser + command; heavy imports happen inside commands).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

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

__all__ = ["EXIT_CODES", "Terminated", "build_parser", "load_recipe", "main"]

#: Exit status of every command: what each means.
EXIT_CODES = {
    0: "done, every input succeeded",
    1: "done, some inputs failed (one line each; the others are complete)",
    2: "usage error: bad arguments, missing files, a missing optional package",
    3: "the output folder took no more files (full, read-only, no permission, over quota); stopped at once",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM: a time limit, Slurm, a container stop)",
}
#: Errors of an output location that end a command with exit status 3.
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C: every clean-up for an interrupt runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

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
    from nucleiseg.io.atomic import OutputError

    try:
        with _sigterm_as_interrupt():
            return int(args.func(args))
    except Terminated:
        print("terminated: finished outputs are complete, nothing partial was written (--resume goes on)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted: finished outputs are complete, nothing partial was written", file=sys.stderr)
        return 130
    except OutputError as exc:
        print(f"error: {exc}; stopped, finished outputs are complete", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return 3 if exc.errno in _OUTPUT_ERRNOS else 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        missing = extra_for(exc)
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return 2


def _os_message(exc: OSError) -> str:
    """One line: the file and the cause (``str(OSError)`` repeats the errno)."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
