"""The nucleiseg web app: a single page plus a small JSON API, served by FastAPI on uvicorn.

Endpoints
---------
``GET /``
    The page (``static/index.html``); its script and styles are under ``/static`` (no CDN).
``POST /api/segment``
    Multipart form: ``file`` (PNG, TIFF, JPEG or BMP, judged by content) and optional
    ``tta`` (bool), ``threshold`` (0 < t < 1), ``min_size`` (pixels >= 0), ``min_confidence``
    (0..1, mean foreground probability below which a nucleus is removed), ``diameter``
    (pixels ``30``, micrometres ``8um``; ``0`` or ``auto``: estimate it), ``pixel_size`` (µm per
    pixel, overriding the file's OME/ImageJ/TIFF metadata), ``channel`` (nuclear channel of a
    multi-channel image: 0-based index or a name from the OME/ImageJ metadata) and ``axes``
    (axis letters of a file without axis metadata, e.g. ``ZYX``). Returns JSON ``{name, count, width, height, channels, dtype, diameter,
    diameter_source, scale, model, model_hash, settings, measurements: [row, ...],
    measurements_csv, timings, image_png, overlay_png, labels_png}``: ``diameter`` is the
    estimated (or given, ``diameter_source == "given"``) median nucleus diameter in pixels,
    ``scale`` the zoom the image was segmented at, ``timings.estimate`` the seconds the size
    estimate took, ``pixel_size_um``/``pixel_size_source`` the pixel size and where it came from
    (``metadata``, ``option`` or ``none``; with one, the measurements gain µm columns). The
    three images are base64-encoded PNGs: the image scaled to 8 bits for display (gray stays
    gray), the outlines drawn on it in RGB, and the labels as a 16-bit gray PNG whose pixel values are the nucleus ids 1..count (``null`` beyond 65,535 nuclei: use
    the ZIP). With ``?format=zip`` the answer is a ZIP holding ``<name>_masks.tif``,
    ``<name>_overlay.png``, ``<name>_measurements.csv``, ``<name>.geojson`` (QuPath detections)
    and ``run.json``; a time/z stack (JSON mode answers 422 for it) gives the label stack
    ``<name>_masks.tif``, ``<name>_overlay.tif``, the measurements with a ``plane`` column,
    ``<name>_rois.zip``, ``<name>.geojson`` and ``run.json``.
``POST /api/evaluate``
    ``file`` plus the ground truth as ``gt`` (label image; a binary mask is split into connected
    components) or ``gt_zip`` (ZIP of binary per-nucleus mask images), and the same options.
    Returns the competition score (mean over IoU 0.50..0.95 of TP/(TP+FP+FN)), ``ap50``, ``f1``,
    ``precision``, ``recall``, ``pq``, TP/FP/FN at IoU 0.5, ``per_threshold`` rows, pixel
    metrics and ``diff_png`` (extra predicted pixels blue, missed pixels red).
``GET /api/models``, ``GET /api/health``
    The model in use and the bundled ones; liveness, load and limits.
``GET /api/openapi.json``
    The machine-readable API description (no interactive docs page: it would load a CDN).
Datasets, training runs, dataset evaluations and their jobs
    See :mod:`nucleiseg.app.routes` (``/api/datasets``, ``/api/train``, ``/api/runs``,
    ``/api/evaluate-dataset``, ``/api/jobs/{id}``, ``/api/jobs/{id}/events``, ...). ``/api/segment``
    and ``/api/evaluate`` take an optional ``model`` form field: any name of ``GET /api/models``,
    finished runs included.

Errors are JSON ``{"error": "<one line>"}``: 413 (too large), 415 (not an image), 422 (bad
form or undecodable file), 503 (queue full), 500 (unexpected; details only in the server log).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from nucleiseg import __version__
from nucleiseg.app.limits import MULTIPART_SLACK, AppSettings, BodySizeLimit, RequestGate, api_error, read_upload, safe_name
from nucleiseg.app.datasets import DatasetRegistry
from nucleiseg.app.jobs import JobManager
from nucleiseg.app.render import Options, Upload, evaluate_job, segment_job, zip_job
from nucleiseg.app.routes import AppState, build_router
from nucleiseg.app.runs import ModelRegistry, list_runs
from nucleiseg.app.uploads import ZipLimits
from nucleiseg.bundle import CLASSICAL, list_bundled
from nucleiseg.heap import map_large_blocks, trim_heap
from nucleiseg.inference.segmenter import Segmenter
from nucleiseg.io.stacks import parse_channel
from nucleiseg.io.units import Diameter

__all__ = ["AppSettings", "ModelHolder", "available_models", "create_app", "load_segmenter"]

log = logging.getLogger("nucleiseg.app")
STATIC_DIR = Path(__file__).resolve().parent / "static"
IMAGE_KINDS = ("png", "tiff", "jpeg", "bmp")
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+([\w.-]+)")
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)

# Form fields shared by both endpoints (module level: FastAPI resolves annotations in these globals).
ThresholdField = Annotated[float | None, Form(gt=0.0, lt=1.0, allow_inf_nan=False, description="foreground probability threshold")]
MinSizeField = Annotated[int | None, Form(ge=0, le=10_000_000, description="remove nuclei smaller than this (pixels)")]
MinConfidenceField = Annotated[
    float | None, Form(ge=0.0, le=1.0, allow_inf_nan=False, description="remove nuclei whose mean foreground probability is below this")
]
DiameterField = Annotated[
    str | None, Form(max_length=32, description="nucleus diameter: pixels (30), micrometres (8um, needs a pixel size), 0 or auto: estimate")
]
PixelSizeField = Annotated[
    float | None, Form(gt=0.0, le=10_000.0, allow_inf_nan=False, description="micrometres per pixel (overrides the file's metadata)")
]
TtaField = Annotated[bool, Form(description="average the 8 flips/rotations")]
ChannelField = Annotated[str | None, Form(max_length=64, description="nuclear channel: 0-based index or a channel name from the OME/ImageJ metadata")]
ModelField = Annotated[str | None, Form(max_length=80, description="model name from GET /api/models (default: the server's)")]
AxesField = Annotated[str | None, Form(pattern=r"^[TZCSYXtzcsyx]{2,6}$", description="axis order of files without metadata, e.g. ZYX, CYX, TCYX")]


def available_models() -> list[str]:
    """Names of the bundled models plus ``"classical"``."""
    return list_bundled() + [CLASSICAL]


def load_segmenter(model: str | Path = "default", device: str = "cpu") -> Segmenter:
    """Load a model; ``"default"`` falls back to ``"classical"`` (logged) while none is bundled.

    Raises
    ------
    FileNotFoundError
        Any other name or folder that holds no model.
    """
    try:
        return Segmenter.from_pretrained(model, device=device)
    except FileNotFoundError:
        if str(model) != "default":
            raise
        log.warning("no bundled 'default' model yet: serving the classical (network-free) model instead")
        return Segmenter.from_pretrained(CLASSICAL)


class ModelHolder:
    """Load the model once, on first use (the app's startup warms it), and share it."""

    def __init__(self, model: str, device: str, segmenter: Segmenter | None = None) -> None:
        self.model = model
        self.device = device
        self._segmenter = segmenter
        self._lock = threading.Lock()

    @property
    def loaded(self) -> Segmenter | None:
        """The model if it has been loaded, else None."""
        return self._segmenter

    def get(self) -> Segmenter:
        """The shared model (loaded on the first call; thread-safe)."""
        if self._segmenter is None:
            with self._lock:
                if self._segmenter is None:
                    self._segmenter = load_segmenter(self.model, self.device)
        return self._segmenter


def _no_paths(text: str) -> str:
    """Replace absolute paths in a message by their last component."""
    return _ABS_PATH.sub(lambda m: m.group(1), " ".join(str(text).split()))


def _validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad or missing field (input values are not echoed)."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path")]
        field = ".".join(loc) or "request"
        if err.get("type") == "missing":
            parts.append(f"missing form field '{field}'")
        else:
            parts.append(f"{field}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": _no_paths(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def create_app(
    model: str | Path | None = None,
    settings: AppSettings | None = None,
    segmenter: Segmenter | None = None,
) -> FastAPI:
    """Build the web app.

    Parameters
    ----------
    model : str or Path, optional
        Bundled model name, run folder or ``"classical"``; overrides ``settings.model``
        (whose default is ``"default"``).
    settings : AppSettings, optional
        Upload, pixel and queue limits.
    segmenter : Segmenter, optional
        Use this already-built model instead of loading one (tests inject slow or failing
        models this way).

    Returns
    -------
    FastAPI
        Serve with ``uvicorn.run(app)``; the model is loaded at startup in a worker thread.
    """
    settings = settings or AppSettings()
    map_large_blocks()  # image-sized arrays get their own mappings, returned to the OS when freed
    if model is not None:
        settings = replace(settings, model=str(model))
    holder = ModelHolder(settings.model, settings.device, segmenter)
    gate = RequestGate(settings.max_concurrency, settings.max_queue)
    state = _app_state(settings, holder)
    app = FastAPI(
        title="nucleiseg", version=__version__, lifespan=_lifespan(settings, holder, state),
        docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",  # FastAPI's docs pages load a CDN
    )
    app.state.settings, app.state.gate, app.state.models, app.state.app = settings, gate, holder, state
    one_file = settings.max_upload_bytes + MULTIPART_SLACK
    limits = {"/api/evaluate": 2 * settings.max_upload_bytes + MULTIPART_SLACK, "/api/datasets": settings.max_dataset_bytes + MULTIPART_SLACK}
    app.add_middleware(BodySizeLimit, limits=limits, default=one_file, per_file=settings.max_upload_bytes)
    _install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(build_router(state))
    _add_info_routes(app, settings, holder, gate, state)
    _add_image_routes(app, settings, _job_runner(settings, gate, state))
    return app


def _lifespan(settings: AppSettings, holder: ModelHolder, state: AppState) -> Any:
    """Load the model at startup (in a worker thread); on shutdown stop the jobs and remove temporary folders."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(holder.get)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.jobs.shutdown)
            shutil.rmtree(state.work_root, ignore_errors=True)
            if settings.runs is None:
                shutil.rmtree(state.runs_root, ignore_errors=True)

    return lifespan


def _job_runner(settings: AppSettings, gate: RequestGate, state: AppState) -> Callable[..., Awaitable[Any]]:
    """``process(job, *args, model=None)``: admit the request (503 when full) and run ``job(segmenter, *args)`` in a worker.

    Freed memory goes back to the OS after every job (a large image must not leave the server
    holding gigabytes; see :mod:`nucleiseg.heap`).
    """

    async def process(job: Any, *args: Any, model: str | None = None) -> Any:
        def run() -> Any:
            try:
                return job(state.models.get(model), *args, settings.max_pixels)
            finally:
                trim_heap()

        gate.admit()
        try:
            return await gate.run(run)
        finally:
            gate.release()

    return process


def _add_info_routes(app: FastAPI, settings: AppSettings, holder: ModelHolder, gate: RequestGate, state: AppState) -> None:
    """``GET /``, ``/api/health`` and ``/api/models``."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        """Liveness, load and limits."""
        loaded = holder.loaded
        return {
            "status": "ok",
            "version": __version__,
            "model": None if loaded is None else loaded.name,
            "model_loaded": loaded is not None,
            "in_flight": gate.in_flight,
            "waiting": gate.waiting,
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                "max_concurrency": settings.max_concurrency, "max_queue": settings.max_queue,
            },
        }

    @app.get("/api/models")
    async def models() -> dict[str, Any]:
        """The model in use (loading it if needed) and the models that could be served."""
        seg = await anyio.to_thread.run_sync(holder.get)
        return {
            "requested": settings.model,
            "loaded": {"name": seg.name, "model_hash": seg.model_hash, "arch": None if seg.is_classical else seg.config.model.arch},
            "available": await anyio.to_thread.run_sync(state.models.names),
            "runs": await anyio.to_thread.run_sync(list_runs, state.runs_root),
        }


def _add_image_routes(app: FastAPI, settings: AppSettings, process: Callable[..., Awaitable[Any]]) -> None:
    """``POST /api/segment`` and ``POST /api/evaluate``."""

    @app.post("/api/segment", response_model=None)
    async def segment(
        file: Annotated[UploadFile, File(description="image: PNG, TIFF, JPEG or BMP")],
        tta: TtaField = False,
        threshold: ThresholdField = None,
        min_size: MinSizeField = None,
        min_confidence: MinConfidenceField = None,
        diameter: DiameterField = None,
        pixel_size: PixelSizeField = None,
        channel: ChannelField = None,
        axes: AxesField = None,
        model: ModelField = None,
        format: Annotated[Literal["json", "zip"], Query(description="json (default) or zip")] = "json",
    ) -> dict[str, Any] | Response:
        """Segment one image; JSON with base64 PNGs, or a ZIP with ``?format=zip`` (also for stacks)."""
        data, kind = await read_upload(file, settings.max_upload_bytes, "file", IMAGE_KINDS)
        upload = Upload(_upload_name(file), data, kind)
        options = Options(tta, threshold, min_size, _diameter(diameter), parse_channel(channel), axes, min_confidence, pixel_size)
        if format == "zip":
            content = await process(zip_job, upload, options, model=model)
            disposition = f'attachment; filename="{upload.name}_nucleiseg.zip"'
            return Response(content, media_type="application/zip", headers={"Content-Disposition": disposition})
        return await process(segment_job, upload, options, model=model)

    @app.post("/api/evaluate")
    async def evaluate(
        file: Annotated[UploadFile, File(description="image: PNG, TIFF, JPEG or BMP")],
        gt: Annotated[UploadFile | None, File(description="ground-truth label image")] = None,
        gt_zip: Annotated[UploadFile | None, File(description="ZIP of binary per-nucleus mask images")] = None,
        tta: TtaField = False,
        threshold: ThresholdField = None,
        min_size: MinSizeField = None,
        min_confidence: MinConfidenceField = None,
        diameter: DiameterField = None,
        pixel_size: PixelSizeField = None,
        channel: ChannelField = None,
        axes: AxesField = None,
        model: ModelField = None,
    ) -> dict[str, Any]:
        """Segment one image and score it against its ground truth."""
        if (gt is None) == (gt_zip is None):
            raise api_error(422, "send the ground truth as exactly one of 'gt' (label image) or 'gt_zip' (ZIP of masks)")
        data, kind = await read_upload(file, settings.max_upload_bytes, "file", IMAGE_KINDS)
        upload = Upload(_upload_name(file), data, kind)
        truth_file, field = (gt, "gt") if gt is not None else (gt_zip, "gt_zip")
        allowed = (*IMAGE_KINDS, "zip") if field == "gt" else ("zip",)
        truth_data, truth_kind = await read_upload(truth_file, settings.max_upload_bytes, field, allowed)
        truth = Upload(_upload_name(truth_file, field), truth_data, truth_kind)
        options = Options(tta, threshold, min_size, _diameter(diameter), parse_channel(channel), axes, min_confidence, pixel_size)
        return await process(evaluate_job, upload, truth, options, model=model)


def _app_state(settings: AppSettings, holder: ModelHolder) -> AppState:
    """Datasets, jobs, models and folders of the Train and Performance screens."""
    runs_root = Path(settings.runs) if settings.runs else Path(tempfile.mkdtemp(prefix="nucleiseg-runs-"))
    runs_root.mkdir(parents=True, exist_ok=True)
    zip_limits = ZipLimits(settings.max_dataset_files, settings.max_dataset_unpacked_bytes)
    datasets = DatasetRegistry([Path(d) for d in settings.data], runs_root / ".datasets", zip_limits, settings.max_pixels)
    models = ModelRegistry(holder.get, settings.model, available_models, load_segmenter, runs_root, settings.device)
    label = str(settings.runs) if settings.runs else "<temporary>"
    return AppState(settings, datasets, JobManager(), models, runs_root, label, Path(tempfile.mkdtemp(prefix="nucleiseg-eval-")))


def _diameter(text: str | None) -> Diameter | None:
    """The ``diameter`` form field as a :class:`Diameter` (None: the model's own), or 422."""
    if text is None:
        return None
    try:
        return Diameter.parse(text)
    except ValueError as exc:
        raise api_error(422, f"diameter: {exc}") from None


def _upload_name(upload: UploadFile | None, default: str = "image") -> str:
    """The upload's sanitised file stem (see :func:`~nucleiseg.app.limits.safe_name`)."""
    return safe_name(upload.filename if upload is not None else None, default)
