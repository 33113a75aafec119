"""The HTTP application serving an exported detector.

Endpoints (all JSON except ``/metrics``):

* ``POST /v1/predict``: one JPEG or PNG image, either as the file field ``image``
  of a ``multipart/form-data`` body or as the raw body with ``Content-Type:
  image/jpeg`` or ``image/png``. Answers ``{"id", "detections", "width",
  "height", "latency_ms", "model"}``; ``detections`` is a list of ``{"box":
  [x1, y1, x2, y2], "score", "label", "class"}`` in pixels of the image as
  uploaded (after its EXIF orientation is applied). A mask model's detections also carry
  ``"mask_area"`` (pixels) and, by the query parameter ``masks``: ``rle`` (default) a ``"mask"``,
  COCO compressed RLE ``{"size": [h, w], "counts"}`` of the uploaded image; ``polygon`` a
  ``"polygon"`` ``[[x1, y1, x2, y2, ...], ...]`` (outer outlines along the pixel edges); ``none``
  neither. The request log keeps ``mask_area``, never the masks.
* ``GET /healthz``: liveness, ``{"status": "ok"}`` while the process serves HTTP, never behind the token.
* ``GET /readyz``: readiness, 200 ``{"status": "ready", "model": <export>}`` once a model is loaded and
  warm, else 503: a server following a registry alias that is not set yet, or ``"status": "stale"``
  when the alias names an export this server could not load (gone from the store, broken: the
  previous model is still served, and the answer says which, what the alias names and why; so does
  ``/v1/model``'s ``stale``); never behind the token.
* ``POST /v1/admin/reload``: a server following an alias (``serve.alias``) reads it now and switches
  if it moved (the answer says to which export); 404 for a server of one fixed model.
* ``GET /v1/model``: what is served: the ``info`` given to :func:`create_app`
  (recipe, dataset version, model fingerprint, model file name; never a path),
  the ``task`` (``instance_segmentation`` when the graph has a ``masks`` output, else
  ``detection``), the class names, the preprocessing contract and the upload limits.
* ``GET /metrics``: Prometheus text exposition of ``cvops_requests_total{status, source}``,
  ``cvops_request_latency_seconds{source}`` (successful predictions: decode + inference),
  ``cvops_errors_total{reason}``, ``cvops_batch_size``, ``cvops_drift_detected{source}``,
  ``cvops_drift_feature{feature, source}``, ``cvops_drift_checks_total``, the precision estimate
  ``cvops_estimated_precision{class, source}`` and ``cvops_reference_precision{class}``, and
  ``cvops_model_info{project, model}`` (:mod:`cvops.serve.metrics`). A request names its source (camera,
  site, customer) in the ``X-Cvops-Source`` header, the ``source`` query parameter or a ``source`` form
  field; at most ``serve.max_sources`` get series of their own (:mod:`cvops.serve.sources`).

Every refused request gets a 4xx answer ``{"error": "..."}`` that names the
problem, the limit crossed and the setting that moves it, and the server goes
on serving (the ``reason`` label of ``cvops_errors_total`` in brackets):

* 400: a ``masks`` query parameter other than once ``rle``, ``polygon`` or ``none`` (``bad_parameter``),
  an empty body (``empty_body``), bytes that are not a JPEG or PNG or an
  image that does not decode (``bad_image``, ``truncated_image``), a malformed
  multipart body (``bad_multipart``, ``missing_image``), an image whose long
  side is over ``max_aspect_ratio`` times its short side (``aspect_ratio``);
* 401: a missing or wrong bearer token (``unauthorized``);
* 408: a body that has not fully arrived within ``body_timeout_s`` (``body_timeout``);
* 413: a body over ``max_upload_mb`` (``too_large``; checked on ``Content-Length``
  and again while reading), an image over ``max_pixels`` (``too_many_pixels``) or
  one whose decode alone needs more than the decode budget (``decode_memory``),
  all checked on the image header before any pixel is decoded;
* 415: any other content type (``unsupported_media_type``);
* 499 (never received: the client left): a client that disconnected before its
  body arrived (``client_disconnect``), counted and logged without a traceback;
* 503 with ``Retry-After``: the decode budget stayed full for ``decode_wait_s``
  (``decode_busy``).

A failure of the server itself answers 500 ``{"error": "... error id <id> in the
server log"}``; the detail (exception, library paths) goes to the server log
only, never into a response.

The application is wired here from small parts, one concern each:
:mod:`~cvops.serve.upload` reads the request, :mod:`~cvops.serve.decode` and
:mod:`~cvops.serve.budget` decode the image within the memory bounds,
:mod:`~cvops.serve.slots` holds the model (swaps), :mod:`~cvops.serve.batching`
batches inferences (isolation), :mod:`~cvops.serve.predict` answers and records,
:mod:`~cvops.serve.metrics` and :mod:`~cvops.serve.driftwatch` feed ``/metrics``,
:mod:`~cvops.serve.auth` and :mod:`~cvops.serve.errors` wrap it all; the limits
are checked once, by :func:`cvops.serve.limits.check`.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cvops.detector.runtime import OnnxDetector
from cvops.requestlog import RequestLog
from cvops.schema import MonitorConfig, ServeConfig
from cvops.serve import limits
from cvops.serve.auth import BearerAuth
from cvops.serve.budget import DecodeBudget, UploadBudget
from cvops.serve.driftwatch import DriftFn, DriftWatch
from cvops.serve.errors import ApiError, CatchAll, clean, error_id
from cvops.serve.metrics import ServeMetrics
from cvops.serve.predict import Predictor
from cvops.serve.slots import ModelLoader, ModelSlot
from cvops.serve.upload import MULTIPART, UploadReader, mask_format, media_type
from cvops.serve.sources import DEFAULT, HEADER as SOURCE_HEADER, Sources

logger = logging.getLogger("cvops.serve")

PREDICT = "/v1/predict"


def create_app(detector: OnnxDetector | None, cfg: ServeConfig, *, info: dict, log: RequestLog | None,
               token: str | None = None, drift: DriftFn | None = None,
               drift_window: int = MonitorConfig.drift_window, drift_every: int = MonitorConfig.drift_every,
               reload: Callable[[], dict] | None = None, shadow: Any = None) -> FastAPI:
    """Build the FastAPI application serving ``detector`` (see the module docstring).

    Args:
        detector: the loaded exported model (None: not ready until ``app.state.load`` gives it one).
        info: what ``GET /v1/model`` reports about the model (recipe, dataset
            version, ``fingerprint``, ...); ``info["fingerprint"]`` is the
            ``model`` of every prediction.
        log: where every prediction request is recorded (None: no request log).
        cfg: the ``serve`` config (limits, batching; :class:`cvops.schema.ServeConfig`, where the
            defaults live).
        token: when set (and not empty), every endpoint except ``/healthz`` and ``/readyz`` needs
            ``Authorization: Bearer <token>``.
        drift: called in a background thread with the last ``drift_window`` records of
            successful requests, every ``drift_every`` of them (``monitor.drift_window`` /
            ``drift_every``); see :class:`~cvops.serve.driftwatch.DriftWatch` for what its result sets.
        reload: what ``POST /v1/admin/reload`` calls (in a worker thread): look for a new model and
            swap to it; returns the answer's JSON. None: the endpoint answers 404.
        shadow: a :class:`~cvops.serve.shadow.Shadow` offered every successful request (None: no shadow).

    Returns:
        The application; ``app.state.metrics`` (:class:`~cvops.serve.metrics.ServeMetrics`),
        ``app.state.drift`` (:class:`~cvops.serve.driftwatch.DriftWatch` or None), ``app.state.budget``
        (:class:`~cvops.serve.budget.DecodeBudget`), ``app.state.models``
        (:class:`~cvops.serve.slots.ModelSlot`) and ``app.state.load(detector, info, drift=None)`` (warm it,
        then serve it) are exposed for callers.

    Raises:
        ConfigError: a ``serve`` value no server can run with (:func:`cvops.serve.limits.check`).
    """
    limits.check(cfg)
    metrics = ServeMetrics()
    # a server that may swap models keeps a drift window even before it has a drift check
    watch = DriftWatch(drift, drift_window, drift_every, metrics) if drift is not None or reload is not None else None
    slot = ModelSlot()
    loader = ModelLoader(slot, cfg, metrics, watch)
    if detector is not None:
        loader.install(detector, info, drift)
    budget = DecodeBudget(cfg.decode_memory_mb, cfg.decode_wait_s)
    uploads = UploadReader(cfg.max_upload_mb, cfg.body_timeout_s, UploadBudget(cfg.upload_memory_mb))
    predictor = Predictor(cfg, slot, budget, metrics, log, watch)
    sources = Sources(cfg.max_sources, on_overflow=metrics.sources_overflow.inc)
    if shadow is not None:
        shadow.metrics = metrics
        predictor.shadow = shadow

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if watch is not None:
            watch.join(timeout=10)
        if shadow is not None:
            shadow.close()
        if log is not None:
            log.close()

    app = FastAPI(title="cvops detector", version=str(info.get("fingerprint") or "unknown"), lifespan=lifespan)
    app.state.metrics = metrics
    app.state.drift = watch
    app.state.detector = detector
    app.state.budget = budget
    app.state.models = slot
    app.state.load = loader.load
    app.state.shadow = shadow
    app.state.sources = sources
    app.state.log = log
    _guard(app, metrics, token)
    _predict_route(app, predictor, uploads, sources)
    _other_routes(app, slot, metrics, reload)
    return app


def _guard(app: FastAPI, metrics: ServeMetrics, token: str | None) -> None:
    """The token check, the last-resort 500 and the error handlers: every refusal answered as JSON and counted."""

    def status(path: str, code: int) -> int | None:  # only prediction requests count by status
        return code if path == PREDICT else None

    if token:
        app.add_middleware(BearerAuth, token=token,
                           on_reject=lambda path: metrics.failed("unauthorized", status(path, 401)))
    # outermost: also around the token check
    app.add_middleware(CatchAll, on_error=lambda path: metrics.failed("internal", status(path, 500)))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.failed(exc.reason, status(request.url.path, exc.status), getattr(request.state, "source", DEFAULT))
        headers = dict(exc.headers or {})
        if 400 <= exc.status < 500:  # often answered before the body ended: the rest of it must not hold the
            headers["Connection"] = "close"  # connection (uvicorn re-arms no timer for a body nobody reads)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.failed(f"http_{exc.status_code}")
        return JSONResponse({"error": clean(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.failed("validation")
        return JSONResponse({"error": f"invalid request: {clean(exc.errors())}"}, status_code=422)


def _predict_route(app: FastAPI, predictor: Predictor, uploads: UploadReader, sources: Sources) -> None:
    """``POST /v1/predict``: the body read on the event loop, everything else in a worker thread."""

    @app.post(PREDICT)
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        media = media_type(request.headers.get("content-type"))
        held = [0]  # this request's bytes in the upload budget, given back when it is answered
        named = request.headers.get(SOURCE_HEADER) or request.query_params.get("source")
        try:
            masks = mask_format(request.query_params)  # before the body: a bad parameter costs no upload
            data = await uploads.image_bytes(request, media, held)
            source = request.state.source = sources.label(named or getattr(request.state, "form_source", None))
            result = await run_in_threadpool(predictor.predict, data, started,
                                             "multipart" if media == MULTIPART else "raw", masks, source)
        except ApiError as e:
            if not hasattr(request.state, "source"):
                request.state.source = sources.label(named or getattr(request.state, "form_source", None))
            if e.status != 500:  # a 500 is logged where it happened (Predictor)
                await run_in_threadpool(predictor.log_failure, e.status, e.reason, media[:100], started, None,
                                        request.state.source)
            raise
        finally:
            uploads.budget.give_back(held)
        return JSONResponse(result)


def _other_routes(app: FastAPI, slot: ModelSlot, metrics: ServeMetrics, reload: Callable[[], dict] | None) -> None:
    """The probes, ``/v1/model``, ``/v1/admin/reload`` and ``/metrics``."""

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def stale() -> dict | None:
        follower = getattr(app.state, "follower", None)
        return follower.stale() if follower is not None else None

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        served = slot.current
        if served is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        behind = stale()
        if behind is not None:  # the alias names an export this server could not load: not what it should serve
            return JSONResponse({"status": "stale", "model": served.fingerprint, **behind}, status_code=503)
        return JSONResponse({"status": "ready", "model": served.fingerprint})

    @app.get("/v1/model")
    async def model() -> JSONResponse:
        served = slot.current
        if served is None:
            raise ApiError(503, "not_ready", "no model is loaded yet; /readyz says when", headers={"Retry-After": "2"})
        behind = stale()
        return JSONResponse({**served.model_info, **({"stale": behind} if behind else {})})

    @app.post("/v1/admin/reload")
    async def admin_reload() -> JSONResponse:
        if reload is None:
            raise ApiError(404, "no_reload", "this server serves one fixed model (start it with serve.alias=NAME "
                                             "to follow a registry alias)")
        try:
            result = await run_in_threadpool(reload)
        except Exception as e:
            eid = error_id()
            logger.error("reload failed (error id %s): %s: %s", eid, type(e).__name__, e, exc_info=True)
            metrics.failed("reload")
            raise ApiError(500, "reload", f"reload failed ({type(e).__name__}: {clean(str(e))}); the previous "
                                          f"model is still served; error id {eid} in the server log") from e
        return JSONResponse(jsonable_encoder(result))

    reviewed = {"mtime": None}

    def refresh_reviewed() -> None:  # the monitor's figures, read again when the file changed
        log = getattr(app.state, "log", None)
        if log is None:
            return
        from cvops.annotate import accuracy

        path = Path(log.directory) / accuracy.FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime != reviewed["mtime"]:
            reviewed["mtime"] = mtime
            metrics.reviewed(accuracy.read(Path(log.directory)))

    @app.get("/metrics")
    async def prometheus() -> Response:
        refresh_reviewed()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
