"""``nucleiseg serve``: run the web app (page + JSON API) with uvicorn.

Registered in the main parser with :func:`add_parser`; also runnable on its own as
``python -m nucleiseg.cli.serve [options]`` (the load benchmark starts it that way).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _configure(p: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to a parser."""
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--model", default="default", help="bundled model name, run folder, or 'classical' (default: default)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted file in MB (default 32)")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest accepted image in pixels (default 64000000)")
    p.add_argument("--max-concurrency", type=int, default=2, help="images processed at the same time (default 2)")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait; more get HTTP 503 (default 8)")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="dataset folder offered on the Train and Performance screens (any layout `nucleiseg evaluate` reads); repeatable")
    p.add_argument("--runs", metavar="DIR", help="folder of training runs, kept across restarts (default: a temporary folder)")
    p.add_argument("--max-dataset-mb", type=float, default=256.0, help="largest dataset ZIP upload in MB (default 256)")
    p.add_argument("--device", default="cpu", help="torch device for network models (default cpu)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="server log level")
    p.set_defaults(func=cmd_serve)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``serve`` sub-command on the main parser's sub-parsers."""
    p = sub.add_parser(
        "serve",
        help="run the web app: upload images in a browser, or POST them to the JSON API",
        description="Serve a single-page app and a JSON API (POST /api/segment, POST /api/evaluate, "
        "GET /api/models, GET /api/health, and the Train and Performance screens' /api/datasets, /api/train, "
        "/api/evaluate-dataset, /api/jobs/{id}). The model is loaded once and shared; uploads are capped "
        "in size and pixels, and at most --max-concurrency images are processed at once with "
        "--max-queue more waiting. Training runs in a child process, one at a time, into --runs.",
    )
    _configure(p)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``nucleiseg serve`` until interrupted."""
    import uvicorn

    from nucleiseg.app.limits import AppSettings
    from nucleiseg.app.server import create_app, load_segmenter

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_dataset_mb <= 0:
        raise ValueError(f"--max-upload-mb and --max-dataset-mb must be positive, got {args.max_upload_mb}, {args.max_dataset_mb}")
    for folder in args.data:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--data {folder}: no such folder")
    settings = AppSettings(
        model=args.model, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, device=args.device,
        data=tuple(args.data), runs=args.runs, max_dataset_bytes=int(args.max_dataset_mb * 1024 * 1024),
    )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    segmenter = load_segmenter(args.model, args.device)  # fail before binding the port
    app = create_app(settings=settings, segmenter=segmenter)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"nucleiseg web app on http://{host}:{args.port}/ (model {segmenter.name}); press Ctrl+C to stop", flush=True)
    if args.host not in _LOOPBACK:
        print("note: the app has no authentication; anyone who can reach this address can use it", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m nucleiseg.cli.serve [options]``."""
    parser = argparse.ArgumentParser(prog="nucleiseg serve", description="Run the nucleiseg web app.")
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_serve(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
