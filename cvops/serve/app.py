"""The HTTP application serving an exported detector.

Endpoints (all JSON except ``/metrics``):

* ``POST /v1/predict``: one JPEG or PNG image, either as the file field ``image``
  of a ``multipart/form-data`` body or as the raw body with ``Content-Type:
  image/jpeg`` or ``image/png``. Answers ``{"id", "detections", "width",
  "height", "latency_ms", "model"}``; ``detections`` is a list of ``{"box":
  [x1, y1, x2, y2], "score", "label", "class"}`` in pixels of the image as
  uploaded (after its EXIF orientation is applied).
* ``GET /healthz``: ``{"status": "ok"}``, never behind the token.
* ``GET /v1/model``: what is served: the ``info`` given to :func:`create_app`
  (recipe, dataset version, model fingerprint, ...), the class names, the
  preprocessing contract and the upload limits.
* ``GET /metrics``: Prometheus text exposition of ``cvops_requests_total{status}``,
  ``cvops_request_latency_seconds`` (successful predictions: decode + inference),
  ``cvops_errors_total{reason}``, ``cvops_drift_detected``,
  ``cvops_drift_feature{feature}`` and ``cvops_drift_checks_total``.

Every refused request gets a 4xx answer ``{"error": "..."}`` that names the
problem (and the limit, where one was crossed), and the server goes on serving:
400 for an empty body, bytes that are not a JPEG or PNG, or an image that does
not decode completely (truncated); 401 for a missing or wrong bearer token; 413
for a body over ``max_upload_mb`` (checked on ``Content-Length`` and again while
reading) or an image over ``max_pixels`` (checked on the image header, before any
pixel is decoded); 415 for any other content type.

Decoding and inference run in a worker thread pool, so requests are served in
parallel (ONNX Runtime releases the GIL while it runs).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from cvops.export.runtime import OnnxDetector
from cvops.serve.requestlog import RequestLog

logger = logging.getLogger("cvops.serve")

PREDICT = "/v1/predict"
OPEN_PATHS = frozenset({"/healthz"})
FIELD = "image"
JPEG_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
PNG_TYPES = frozenset({"image/png"})
PART_TYPES = JPEG_TYPES | PNG_TYPES | {"application/octet-stream", ""}
MULTIPART = "multipart/form-data"
# 1 ms - 2 s, denser where a CPU detector usually answers
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0)
HOW = "send multipart/form-data with a file field 'image', or a raw body with Content-Type image/jpeg or image/png"

DriftFn = Callable[[list[dict]], dict[str, float]]


class ApiError(Exception):
    """A request the server refuses, answered as ``{"error": message}``.

    Args:
        status: the HTTP status code (4xx).
        reason: a short machine-readable reason, the ``reason`` label of
            ``cvops_errors_total`` and the ``error`` of the logged record.
        message: the human-readable explanation sent back.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """``"JPEG"`` or ``"PNG"`` from the first bytes, else ``None``."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return None


def to_bgr(image: Any) -> np.ndarray:
    """A decoded PIL image as a contiguous ``(H, W, 3)`` BGR ``uint8`` array.

    Gray, palette, alpha (dropped), CMYK and 16-bit images are all converted; a
    16-bit image keeps its 8 most significant bits.

    Args:
        image: a loaded ``PIL.Image.Image``.

    Returns:
        The BGR array.
    """
    import cv2

    mode = image.mode
    if mode.startswith("I") or mode == "F":  # I;16*, I (16-bit PNG in older Pillow), F
        a = np.asarray(image)
        if mode == "F":
            gray = np.clip(a, 0, 255).astype(np.uint8)
        else:
            gray = (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    if mode in ("1", "L", "LA"):
        gray = np.asarray(image.convert("L"))
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Decode JPEG or PNG bytes completely, refusing oversize images before decoding pixels.

    Args:
        data: the uploaded bytes.
        max_pixels: the largest ``width * height`` accepted.

    Returns:
        ``(bgr, mime type)``: the image as BGR ``uint8`` with its EXIF
        orientation applied, and ``"image/jpeg"`` or ``"image/png"``.

    Raises:
        ApiError: 400 for empty, unrecognised, corrupt or truncated data; 413 when
            the header declares more than ``max_pixels`` pixels.
    """
    from PIL import Image, ImageOps

    if not data:
        raise ApiError(400, "empty_body", f"the request carries no image bytes; {HOW}")
    fmt = sniff(data)
    if fmt is None:
        raise ApiError(400, "bad_image", f"the {len(data)} bytes sent are not a JPEG or PNG image "
                                         f"(unrecognised signature {data[:8].hex()})")
    too_many = f"the limit is {max_pixels} pixels (width x height)"
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"the {fmt} image is too large to decode ({e}); {too_many}") from e
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        if _truncated(e):
            raise ApiError(400, "truncated_image", f"the {fmt} image ({len(data)} bytes) ends inside its header "
                                                   f"(truncated upload?): {e}") from e
        raise ApiError(400, "bad_image", f"cannot read the {fmt} image header: {e}") from e
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ApiError(400, "bad_image", f"the {fmt} image declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels", f"the {fmt} image is {w}x{h} = {w * h} pixels; {too_many}")
    try:
        image.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is off by default)
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"the {fmt} image is too large to decode ({e}); {too_many}") from e
    except Exception as e:
        truncated = _truncated(e)
        raise ApiError(400, "truncated_image" if truncated else "bad_image",
                       f"the {fmt} image ({len(data)} bytes) does not decode completely"
                       f"{' (truncated upload?)' if truncated else ''}: {e}") from e
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # a broken EXIF block: keep the stored orientation
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
    return to_bgr(image), "image/png" if fmt == "PNG" else "image/jpeg"


def _truncated(error: BaseException) -> bool:
    """Whether a PIL decoding error says the data ended early."""
    return isinstance(error, EOFError) or "truncated" in str(error).lower()


def _media_type(value: str | None) -> str:
    """The lower-case ``type/subtype`` of a Content-Type value ("" when missing)."""
    return (value or "").split(";", 1)[0].strip().lower()


# ---------------------------------------------------------------------------
# Metrics and drift
# ---------------------------------------------------------------------------


class ServeMetrics:
    """The Prometheus metrics of one application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cvops_requests", "Prediction requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram("cvops_request_latency_seconds",
                                 "Latency of successful predictions (decode + inference)",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("cvops_errors", "Refused or failed requests by reason", ["reason"], registry=r)
        self.drift_detected = Gauge("cvops_drift_detected", "1 when the last drift check found drift", registry=r)
        self.drift_feature = Gauge("cvops_drift_feature", "Per-feature value of the last drift check", ["feature"],
                                   registry=r)
        self.drift_checks = Counter("cvops_drift_checks", "Drift checks completed", registry=r)


class DriftWatch:
    """Keeps the last ``window`` records and runs ``fn`` on them every ``every`` records.

    The check runs in a background thread, one at a time: when a check is due
    while the previous one still runs, it is skipped.

    Args:
        fn: called with the window's records; returns ``{name: value}``. The key
            ``drift_detected`` (or ``detected``) sets ``cvops_drift_detected``,
            every other numeric value sets ``cvops_drift_feature{feature=name}``.
        window: number of records kept.
        every: run a check after this many records.
        metrics: where the results go.
    """

    def __init__(self, fn: DriftFn, window: int, every: int, metrics: ServeMetrics) -> None:
        if window < 1 or every < 1:
            raise ValueError(f"drift window ({window}) and drift_every ({every}) must be at least 1")
        self.fn = fn
        self.every = every
        self.metrics = metrics
        self.records: deque[dict] = deque(maxlen=window)
        self.count = 0
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, record: dict) -> None:
        """Add one successful request's record; start a check when one is due."""
        with self._lock:
            self.records.append(record)
            self.count += 1
            snapshot = list(self.records) if self.count % self.every == 0 else None
        if snapshot is None:
            return
        if not self._running.acquire(blocking=False):
            logger.info("drift check skipped: the previous one is still running")
            return
        self._thread = threading.Thread(target=self._check, args=(snapshot,), name="cvops-drift", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running check to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _check(self, records: list[dict]) -> None:
        try:
            result = self.fn(records)
            for name, value in dict(result).items():
                if isinstance(value, (bool, int, float, np.number, np.bool_)):
                    if name in ("drift_detected", "detected"):
                        self.metrics.drift_detected.set(float(value))
                    else:
                        self.metrics.drift_feature.labels(feature=str(name)).set(float(value))
            self.metrics.drift_checks.inc()
        except Exception:
            logger.exception("drift check failed")
            self.metrics.errors.labels(reason="drift_check").inc()
        finally:
            self._running.release()


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: every HTTP path except :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.

    Args:
        app: the wrapped ASGI application.
        token: the expected token.
        on_reject: called with the path of each refused request.
    """

    def __init__(self, app: Any, token: str, on_reject: Callable[[str], None]) -> None:
        self.app = app
        self.token = token.encode()
        self.on_reject = on_reject

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the raw ASGI headers carry the right bearer token."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        self.on_reject(scope["path"])
        response = JSONResponse({"error": "missing or wrong bearer token: send the header "
                                          "'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------


class MicroBatcher:
    """Dynamic batching: concurrent requests share one inference call.

    Request threads call :meth:`predict_one`; one batching thread takes the
    first waiting image, collects more for up to ``wait_ms`` (at most
    ``max_batch``), runs ``detector.predict`` on all of them at once and hands
    each caller its own result. A lone request waits at most ``wait_ms``.
    """

    def __init__(self, detector: Any, max_batch: int, wait_ms: float) -> None:
        import queue

        self.detector, self.max_batch, self.wait = detector, max(1, int(max_batch)), max(0.0, wait_ms) / 1000
        self.queue: "queue.Queue[tuple]" = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="cvops-batcher", daemon=True)
        self.thread.start()

    def predict_one(self, bgr: np.ndarray) -> Any:
        from concurrent.futures import Future

        fut: Future = Future()
        self.queue.put((bgr, fut))
        return fut.result()

    def _loop(self) -> None:
        import queue

        while True:
            items = [self.queue.get()]
            deadline = time.perf_counter() + self.wait
            while len(items) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    items.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.detector.predict([bgr for bgr, _ in items])
            except Exception as e:  # every caller of this batch gets the error
                for _, fut in items:
                    fut.set_exception(e)
                continue
            for (_, fut), r in zip(items, results):
                fut.set_result(r)


def create_app(detector: OnnxDetector, *, info: dict, log: RequestLog | None, max_upload_mb: float = 20,
               max_pixels: int = 40_000_000, token: str | None = None, drift: DriftFn | None = None,
               window: int = 200, drift_every: int = 50, max_batch: int = 1, batch_wait_ms: float = 2.0) -> FastAPI:
    """Build the FastAPI application serving ``detector`` (see the module docstring).

    Args:
        detector: the loaded exported model.
        info: what ``GET /v1/model`` reports about the model (recipe, dataset
            version, ``fingerprint``, ...); ``info["fingerprint"]`` is the
            ``model`` of every prediction.
        log: where every prediction request is recorded (None: no request log).
        max_upload_mb: the largest request body accepted, in MiB.
        max_pixels: the largest ``width * height`` accepted.
        token: when set (and not empty), every endpoint except ``/healthz`` needs
            ``Authorization: Bearer <token>``.
        max_batch: with more than 1, concurrent requests are batched into one inference
            (:class:`MicroBatcher`, waiting at most ``batch_wait_ms`` for company).
        drift: called in a background thread with the last ``window`` records of
            successful requests, every ``drift_every`` of them; see
            :class:`DriftWatch` for what its result sets.
        window: number of records the drift check sees.
        drift_every: requests between drift checks.

    Returns:
        The application; ``app.state.metrics`` (:class:`ServeMetrics`) and
        ``app.state.drift`` (:class:`DriftWatch` or None) are exposed for callers.
    """
    from cvops.monitor.drift import image_stats

    if max_upload_mb <= 0 or max_pixels <= 0:
        raise ValueError(f"max_upload_mb ({max_upload_mb}) and max_pixels ({max_pixels}) must be positive")
    request_log = log
    max_bytes = int(max_upload_mb * 2**20)
    fingerprint = info.get("fingerprint")
    classes = list(detector.classes)
    metrics = ServeMetrics()
    watch = DriftWatch(drift, window, drift_every, metrics) if drift is not None else None
    batch = detector.fixed_batch if detector.fixed_batch and detector.fixed_batch > 1 else 1
    batcher = MicroBatcher(detector, max_batch, batch_wait_ms) if max_batch > 1 else None
    model_info = dict(info)
    model_info.update(classes=classes, preprocess=detector.preprocess.to_dict(), fixed_batch=detector.fixed_batch,
                      limits={"max_upload_mb": max_upload_mb, "max_pixels": max_pixels})
    if "cvops.thresholds" in detector.metadata:
        try:
            model_info.setdefault("thresholds", json.loads(detector.metadata["cvops.thresholds"]))
        except ValueError:
            pass
    model_info = jsonable_encoder(model_info)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if watch is not None:
            watch.join(timeout=10)
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="cvops detector", version=str(fingerprint or "unknown"), lifespan=lifespan)
    app.state.metrics = metrics
    app.state.drift = watch
    app.state.detector = detector

    def refused(path: str) -> None:
        metrics.errors.labels(reason="unauthorized").inc()
        if path == PREDICT:
            metrics.requests.labels(status="401").inc()

    if token:
        app.add_middleware(BearerAuth, token=token, on_reject=refused)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.labels(reason=exc.reason).inc()
        if request.url.path == PREDICT:
            metrics.requests.labels(status=str(exc.status)).inc()
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.errors.labels(reason=f"http_{exc.status_code}").inc()
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(reason="validation").inc()
        return JSONResponse({"error": f"invalid request: {exc.errors()}"}, status_code=422)

    async def read_body(request: Request) -> bytes:
        """The request body, refused (413) as soon as it is known to exceed ``max_bytes``."""
        limit = f"the limit is {max_upload_mb:g} MB ({max_bytes} bytes)"
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "bad_request", f"invalid Content-Length header {length!r}") from None
            if declared > max_bytes:
                raise ApiError(413, "too_large", f"the request body is {declared} bytes; {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise ApiError(413, "too_large", f"the request body is over {max_bytes} bytes; {limit}")
        return bytes(body)

    async def image_bytes(request: Request, media: str) -> bytes:
        """The image bytes of a raw or multipart request."""
        if media not in JPEG_TYPES | PNG_TYPES | {MULTIPART}:
            got = f"Content-Type {media!r}" if media else "no Content-Type"
            raise ApiError(415, "unsupported_media_type", f"unsupported media type: the request has {got}; {HOW}")
        body = await read_body(request)
        if media != MULTIPART:
            return body
        if not body:
            raise ApiError(400, "empty_body", f"the request body is empty; {HOW}")

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
        except Exception as e:  # MultiPartException / HTTPException(400) / parser errors
            detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
            raise ApiError(400, "bad_multipart", f"malformed multipart/form-data body: {detail}") from e
        try:
            part = form.get(FIELD)
            if not isinstance(part, UploadFile):
                what = "has no field" if part is None else "has a text field, not a file,"
                raise ApiError(400, "missing_image", f"the multipart body {what} named '{FIELD}'; {HOW}")
            part_media = _media_type(part.content_type)
            if part_media not in PART_TYPES:
                raise ApiError(415, "unsupported_media_type",
                               f"unsupported media type: the '{FIELD}' part has Content-Type {part_media!r}; "
                               "send image/jpeg or image/png")
            return await part.read()
        finally:
            await form.close()

    def infer(data: bytes, started: float, upload: str) -> dict[str, Any]:
        """Decode, detect, log: runs in the thread pool."""
        bgr, mime = decode_image(data, max_pixels)
        try:
            dets = batcher.predict_one(bgr) if batcher is not None else detector.predict([bgr] * batch)[0]
        except Exception as e:
            log_failure(500, "inference", mime)
            raise ApiError(500, "inference", f"inference failed: {type(e).__name__}: {e}") from e
        detections = dets.to_json(classes)
        h, w = bgr.shape[:2]
        latency_ms = (time.perf_counter() - started) * 1000
        rid = uuid.uuid4().hex
        record = {"id": rid, "status": 200, "latency_ms": round(latency_ms, 3), "content_type": mime,
                  "upload": upload, **image_stats(bgr), "width": w, "height": h, "model": fingerprint,
                  "detections": detections}
        if dets.embedding is not None:  # what the monitor's embedding test compares
            record["embedding"] = [round(float(v), 5) for v in dets.embedding]
        if request_log is not None:
            try:
                request_log.append(record, image=data)
            except Exception:  # a full disk must not take predictions down
                logger.exception("could not write the request log")
                metrics.errors.labels(reason="request_log").inc()
        if watch is not None:
            watch.add(record)
        metrics.latency.observe(latency_ms / 1000)
        metrics.requests.labels(status="200").inc()
        return {"id": rid, "detections": detections, "width": w, "height": h, "latency_ms": round(latency_ms, 3),
                "model": fingerprint}

    def log_failure(status: int, reason: str, content_type: str, started: float | None = None) -> None:
        if request_log is None:
            return
        rec: dict[str, Any] = {"status": status, "error": reason, "content_type": content_type, "model": fingerprint}
        if started is not None:
            rec["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        try:
            request_log.append(rec)
        except Exception:
            logger.exception("could not write the request log")
            metrics.errors.labels(reason="request_log").inc()

    @app.post(PREDICT)
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        media = _media_type(request.headers.get("content-type"))
        try:
            data = await image_bytes(request, media)
            result = await run_in_threadpool(infer, data, started, "multipart" if media == MULTIPART else "raw")
        except ApiError as e:
            if e.reason != "inference":  # already logged
                await run_in_threadpool(log_failure, e.status, e.reason, media, started)
            raise
        return JSONResponse(result)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model() -> JSONResponse:
        return JSONResponse(model_info)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
