"""Connect to a Dask cluster: a local one started on this machine, or an existing scheduler.

``--dask local`` starts one worker process per CPU core (``local:N`` for N workers), bound to
the loopback interface only, without the web dashboard. ``--dask tcp://host:8786`` connects to a
scheduler that is already running (``dask scheduler`` + ``dask worker`` on each machine).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client

__all__ = ["parse_spec", "get_client", "dask_client", "describe_client"]

_LOCAL = re.compile(r"^local(?::(\d+))?$")
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://\S+$")
LOOPBACK = "127.0.0.1"


def parse_spec(spec: str) -> tuple[str, int | str]:
    """Split a ``--dask`` value into ``("local", n_workers)`` or ``("address", address)``.

    Parameters
    ----------
    spec : str
        ``"local"`` (one worker per core, at least 1), ``"local:N"`` or a scheduler address
        such as ``"tcp://10.0.0.5:8786"``.

    Raises
    ------
    ValueError
        For anything else, with the accepted forms in the message.
    """
    text = str(spec).strip()
    match = _LOCAL.match(text)
    if match:
        n = int(match.group(1)) if match.group(1) else max(1, os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"--dask {spec}: the number of local workers must be at least 1")
        return "local", n
    if _ADDRESS.match(text):
        return "address", text
    raise ValueError(f"--dask {spec}: expected 'local', 'local:N' or a scheduler address like tcp://host:8786")


def get_client(spec: str, timeout: float = 30.0) -> Client:
    """Open a :class:`distributed.Client` for a ``--dask`` value.

    For ``local[:N]`` a :class:`distributed.LocalCluster` is started with N single-threaded
    worker processes listening on 127.0.0.1 only, no dashboard and quiet logs; closing the
    returned client also closes that cluster. For an address, the client connects to the running scheduler and
    closing it only disconnects.

    Parameters
    ----------
    spec : str
        See :func:`parse_spec`.
    timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    distributed.Client
        Usable as a context manager (``with get_client("local:2") as client: ...``).
    """
    kind, value = parse_spec(spec)
    if kind == "address":
        try:
            return Client(str(value), timeout=timeout)
        except OSError as exc:
            raise ValueError(f"--dask {value}: cannot reach the scheduler ({exc})") from exc
    # With no address the client starts the LocalCluster itself and closes it on close().
    return Client(
        n_workers=int(value),
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=None,
        # The scheduler always serves a few HTTP routes; keep them on loopback at a free port.
        scheduler_kwargs={"dashboard": False, "dashboard_address": f"{LOOPBACK}:0"},
        silence_logs=logging.ERROR,
        timeout=timeout,
    )


@contextmanager
def dask_client(spec: str, timeout: float = 30.0) -> Iterator[Client]:
    """Context manager around :func:`get_client` that closes whatever it created.

    Examples
    --------
    >>> with dask_client("local:2") as client:  # doctest: +SKIP
    ...     summary = segment_items_dask(items, "out", "default", client=client)
    """
    client = get_client(spec, timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def describe_client(client: Client) -> dict[str, object]:
    """Scheduler address and worker count/threads, for ``run.json``."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    workers = info.get("workers", {})
    return {
        "scheduler": info.get("address", ""),
        "workers": len(workers),
        "threads": int(sum(w.get("nthreads", 0) for w in workers.values())),
    }


def _accepts_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters
