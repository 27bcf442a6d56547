"""The JSON API of the Datasets, Train and Performance screens (the page is a client of these).

``GET /api/datasets``, ``POST /api/datasets`` (multipart ``file``: a ZIP of images and masks),
``GET /api/datasets/{name}`` (the ``nucleiseg inspect`` summary, computed once), ``GET
/api/datasets/{name}/thumbs/{k}.png``; ``GET /api/recipes``; ``POST /api/train`` (JSON ``{dataset,
start_from, recipe, arch, minutes, epochs?, name?}``: fine-tunes ``start_from`` (default ``default``)
unless it is ``scratch``; answers 202 with the job); ``GET /api/runs``, ``GET
/api/runs/{name}`` (model card and curves); ``POST /api/evaluate-dataset`` (JSON ``{dataset,
models: [1 or 2 names], tta}``, 202); ``GET /api/jobs``, ``GET /api/jobs/{id}``, ``GET
/api/jobs/{id}/events`` (Server-Sent Events: an ``update`` event with the job record whenever it
changes, ``end`` when it is over), ``POST /api/jobs/{id}/stop``; ``GET /api/jobs/{id}/table.csv``,
``GET /api/jobs/{id}/images/{k}/thumb.png`` and ``.../diff.png?model=0|1`` of an evaluation.
Errors are ``{"error": "<one line>"}`` as everywhere in the app.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from nucleiseg.app.datasets import DatasetRegistry
from nucleiseg.app.jobs import TERMINAL, JobManager
from nucleiseg.app.limits import AppSettings, api_error, read_upload
from nucleiseg.app.performance import diff_png, evaluation_command, evaluation_runner, table_csv, thumb_png
from nucleiseg.app.runs import RUN_NAME, ModelRegistry, list_runs, run_details
from nucleiseg.app.training import SCRATCH, TrainRequest, list_recipes, load_recipe, shown_command, train_runner
from nucleiseg.bundle import reserved_name_error
from nucleiseg.extras import missing_extra

__all__ = ["AppState", "EvaluateBody", "TrainBody", "build_router"]

_PNG = {"Cache-Control": "no-cache"}
#: Finished dataset evaluations whose predictions stay on disk for the difference views.
KEEP_EVALUATIONS = 4

#: How the runs folder (``nucleiseg serve --runs``) appears in the commands a job shows: the
#: command is the one that ran, with this standing for the server's folder (which stays private).
RUNS_SHOWN = "<runs>"

#: How often an event stream looks for a change (an epoch of a tiny recipe takes ~0.2 s).
EVENT_POLL_S = 0.1


@dataclass
class AppState:
    """What the job endpoints share: settings, datasets, jobs, models and the runs folder."""

    settings: AppSettings
    datasets: DatasetRegistry
    jobs: JobManager
    models: ModelRegistry
    runs_root: Path
    runs_label: str
    work_root: Path


class TrainBody(BaseModel):
    """``POST /api/train``."""

    dataset: str = Field(max_length=80)
    recipe: str = Field("tiny", max_length=80)
    arch: str = Field("unet", max_length=20)
    minutes: float = Field(10.0, gt=0, le=24 * 60, allow_inf_nan=False, description="time budget")
    epochs: int | None = Field(None, ge=1, le=10_000, description="override the recipe's epochs")
    name: str | None = Field(None, pattern=RUN_NAME.pattern, description="run folder name (default: generated)")
    start_from: str = Field("default", max_length=80, description="a bundled model or finished run to fine-tune; "
                            "'scratch' trains the recipe from random weights")


class EvaluateBody(BaseModel):
    """``POST /api/evaluate-dataset``."""

    dataset: str = Field(max_length=80)
    models: list[str] = Field(min_length=1, max_length=2)
    tta: bool = False
    held_out: bool = Field(False, description="score only the images a fine-tuned run among the models held out "
                           "of its training on this dataset (its split.json 'val')")


def _run_name(arch: str, dataset: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{arch}-{dataset}")[:40].strip("-")
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _prune_evaluations(jobs: JobManager) -> None:
    """Delete the predictions of all but the newest finished evaluations (their tables stay)."""
    done = [jobs.get(j["id"]) for j in jobs.list() if j["kind"] == "evaluate" and j["state"] in TERMINAL]
    for old in done[KEEP_EVALUATIONS:]:
        hook = old.private.pop("on_forget", None)
        if callable(hook):
            hook()


def _parent(state: AppState, start_from: str) -> tuple[str, str]:
    """The model a training request fine-tunes (path, label in the shown command), or 404."""
    from nucleiseg.bundle import CLASSICAL, list_bundled

    if start_from == SCRATCH or start_from in list_bundled():
        return start_from, start_from
    if start_from in {r["name"] for r in list_runs(state.runs_root)}:
        return str(state.runs_root / start_from), f"{RUNS_SHOWN}/{start_from}"
    choices = [m for m in list_bundled() if m != CLASSICAL] + [SCRATCH]
    raise api_error(404, f"start_from: no model named '{start_from}' to fine-tune; one of {', '.join(choices)} or a finished run")


def _held_out_ids(state: AppState, dataset: Any, runs: list[str]) -> list[str]:
    """The validation ids of the first run fine-tuned on ``dataset`` with images held out, or 422."""
    for name in runs:
        folder = state.runs_root / name
        try:
            record = json.loads((folder / "fine_tune.json").read_text(encoding="utf-8"))
            split = json.loads((folder / "split.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if Path(record.get("data", "")).resolve() == dataset.path.resolve() and not split.get("val_on_train"):
            return list(split["val"])
    raise api_error(422, f"held_out: none of the models is a run fine-tuned on dataset '{dataset.name}' with images held out")


def build_router(state: AppState) -> APIRouter:
    """The router of the dataset, training, run, job and evaluation endpoints."""
    router = APIRouter()
    for add in (_dataset_routes, _training_routes, _job_routes, _evaluation_routes):
        add(router, state)
    return router


def _dataset_routes(router: APIRouter, state: AppState) -> None:
    """``/api/datasets``: list, upload, summary, thumbnails."""
    settings, datasets = state.settings, state.datasets

    @router.get("/api/datasets")
    async def list_datasets() -> dict[str, Any]:
        """Known datasets (summaries once computed) and the upload limits."""
        return {
            "datasets": [datasets.get(n).describe() for n in datasets.names()],
            "uploads": datasets.upload_root is not None,
            "limits": {"max_zip_bytes": settings.max_dataset_bytes, "max_files": datasets.zip_limits.max_files,
                       "max_unpacked_bytes": datasets.zip_limits.max_total_bytes},
        }

    @router.post("/api/datasets", status_code=201)
    async def upload_dataset(file: Annotated[UploadFile, File(description="ZIP of images and their masks")]) -> dict[str, Any]:
        """Add an uploaded ZIP as a dataset (checked and unpacked safely)."""
        data, _ = await read_upload(file, settings.max_dataset_bytes, "file", ("zip",))
        dataset = await anyio.to_thread.run_sync(datasets.add_upload, data, file.filename)
        return (await anyio.to_thread.run_sync(datasets.summarise, dataset.name)).describe()

    @router.get("/api/datasets/{name}")
    async def dataset_summary(name: str) -> dict[str, Any]:
        """The ``nucleiseg inspect`` summary of one dataset, with thumbnail addresses."""
        datasets.get(name)
        return (await anyio.to_thread.run_sync(datasets.summarise, name)).describe()

    @router.get("/api/datasets/{name}/thumbs/{k}.png", include_in_schema=False)
    async def dataset_thumb(name: str, k: int) -> Response:
        thumbs = datasets.get(name).thumbs
        if not 0 <= k < len(thumbs):
            raise api_error(404, f"no thumbnail {k} of dataset '{name}'")
        return Response(thumbs[k], media_type="image/png", headers=_PNG)


def _training_routes(router: APIRouter, state: AppState) -> None:
    """``/api/recipes``, ``/api/train`` and ``/api/runs``."""
    settings, datasets, jobs = state.settings, state.datasets, state.jobs

    @router.get("/api/recipes")
    async def recipes() -> dict[str, Any]:
        """Training recipes and architectures; ``training`` says whether this install can train."""
        from nucleiseg.bundle import list_bundled

        unavailable = missing_extra("torch", "training")
        training = {"available": unavailable is None, "message": unavailable or ""}
        if unavailable is not None:
            return {"recipes": {}, "architectures": [], "runs_persistent": state.runs_label != "<temporary>",
                    "start_from": [], "training": training}
        from nucleiseg.models.registry import list_models

        return {"recipes": list_recipes(), "architectures": list_models(), "runs_persistent": state.runs_label != "<temporary>",
                "start_from": list_bundled() + [SCRATCH], "training": training}

    @router.post("/api/train", status_code=202)
    async def start_training(body: TrainBody) -> dict[str, Any]:
        """Queue a training run; one trains at a time (501 where PyTorch is not installed)."""
        unavailable = missing_extra("torch", "training")
        if unavailable is not None:
            raise api_error(501, unavailable)
        from nucleiseg.models.registry import list_models

        dataset = datasets.get(body.dataset)
        load_recipe(body.recipe)
        if body.arch not in list_models():
            raise api_error(422, f"arch: unknown architecture '{body.arch}'; one of {', '.join(list_models())}")
        name = body.name or _run_name(body.arch, dataset.name)
        refused = reserved_name_error(name)
        if refused is not None:
            raise api_error(409, f"name: {refused}")
        pending = {j["params"].get("name") for j in jobs.list() if j["kind"] == "train" and j["state"] not in TERMINAL}
        if (state.runs_root / name).exists() or name in pending:
            raise api_error(409, f"a run named '{name}' exists already")
        parent, parent_label = _parent(state, body.start_from)
        data_label = (f"{RUNS_SHOWN}/{dataset.path.relative_to(state.runs_root).as_posix()}"
                      if dataset.source == "upload" and dataset.path.is_relative_to(state.runs_root) else str(dataset.path))
        req = TrainRequest(name, dataset, body.recipe, body.arch, body.minutes, body.epochs, body.start_from, parent,
                           parent_label, data_label)
        params = {"name": name, "dataset": dataset.name, "recipe": body.recipe, "arch": body.arch,
                  "minutes": body.minutes, "epochs": body.epochs, "start_from": body.start_from}
        command = shown_command(req, RUNS_SHOWN, settings.device)
        job = jobs.submit("train", params, command, train_runner(req, state.runs_root, settings.device))
        return job.snapshot()

    @router.get("/api/runs")
    async def runs() -> dict[str, Any]:
        """Finished runs (usable as models), newest first."""
        return {"runs": list_runs(state.runs_root)}

    @router.get("/api/runs/{name}")
    async def run(name: str) -> dict[str, Any]:
        """One run with its model card, per-epoch history and validation."""
        return run_details(state.runs_root, name)


def _evaluation_routes(router: APIRouter, state: AppState) -> None:
    """``/api/evaluate-dataset`` and the results of a dataset evaluation."""
    settings, datasets, jobs = state.settings, state.datasets, state.jobs

    @router.post("/api/evaluate-dataset", status_code=202)
    async def evaluate_dataset(body: EvaluateBody) -> dict[str, Any]:
        """Queue the scoring of one or two models on a dataset."""
        dataset = datasets.get(body.dataset)
        targets = [state.models.resolve(model) for model in body.models]  # 404 for an unknown name
        shown = [f"{RUNS_SHOWN}/{t.name}" if isinstance(t, Path) else t for t in targets]
        runs = [t.name for t in targets if isinstance(t, Path)]
        ids = _held_out_ids(state, dataset, runs) if body.held_out else None
        params = {"dataset": dataset.name, "models": body.models, "tta": body.tta, "held_out": body.held_out}
        _prune_evaluations(jobs)
        work = state.work_root / f"eval-{time.time_ns()}"
        runner = evaluation_runner(state.models, dataset, body.models, body.tta, work, settings.max_pixels, ids)
        return jobs.submit("evaluate", params, evaluation_command(dataset, shown, body.tta), runner).snapshot()

    def _evaluation(job_id: str):  # noqa: ANN202
        found = jobs.get(job_id)
        if found.kind != "evaluate":
            raise api_error(404, f"job '{job_id}' is not a dataset evaluation")
        return found

    @router.get("/api/jobs/{job_id}/table.csv")
    async def table(job_id: str) -> Response:
        """The per-image table of a finished evaluation, worst first."""
        found = _evaluation(job_id)
        if found.result is None:
            raise api_error(409, f"job '{job_id}' has no results (state {found.state})")
        headers = {"Content-Disposition": f'attachment; filename="{found.params["dataset"]}_performance.csv"'}
        return Response(table_csv(found.result), media_type="text/csv", headers=headers)

    @router.get("/api/jobs/{job_id}/images/{index}/thumb.png", include_in_schema=False)
    async def eval_thumb(job_id: str, index: int) -> Response:
        return Response(thumb_png(_evaluation(job_id), index), media_type="image/png", headers=_PNG)

    @router.get("/api/jobs/{job_id}/images/{index}/diff.png")
    async def eval_diff(job_id: str, index: int, model: int = 0) -> Response:
        """Difference view of one image for one model: extra predicted pixels blue, missed red."""
        data = await anyio.to_thread.run_sync(diff_png, _evaluation(job_id), index, model)
        return Response(data, media_type="image/png", headers=_PNG)


def _job_routes(router: APIRouter, state: AppState) -> None:
    """``/api/jobs``: list, one, stop, and its Server-Sent Events."""
    jobs = state.jobs

    @router.get("/api/jobs")
    async def list_jobs() -> dict[str, Any]:
        """Every job still remembered, newest first (without results)."""
        return {"jobs": jobs.list()}

    @router.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        """One job's record: state, progress, result or error."""
        return jobs.get(job_id).snapshot()

    @router.post("/api/jobs/{job_id}/stop")
    async def stop(job_id: str) -> dict[str, Any]:
        """Cancel a queued job or stop a running one (a training run is still validated)."""
        return jobs.stop(job_id).snapshot()

    @router.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: ``update`` with the job record on each change, then ``end``."""
        watched = jobs.get(job_id)

        async def stream() -> AsyncIterator[str]:
            last, quiet = -1, 0.0
            while True:
                if watched.version != last:  # a cheap look first: the (deep-copied) snapshot only on a change
                    snap = watched.snapshot()
                    last, quiet = snap["version"], 0.0
                    yield f"event: update\ndata: {json.dumps(snap)}\n\n"
                    if snap["state"] in TERMINAL:
                        yield "event: end\ndata: {}\n\n"
                        return
                if await request.is_disconnected():
                    return
                await anyio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S
                if quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

