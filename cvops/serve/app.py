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
  warm, else 503 (a server following a registry alias that is not set yet); never behind the token.
* ``POST /v1/admin/reload``: a server following an alias (``serve.alias``) reads it now and switches
  if it moved (the answer says to which export); 404 for a server of one fixed model.
* ``GET /v1/model``: what is served: the ``info`` given to :func:`create_app`
  (recipe, dataset version, model fingerprint, model file name; never a path),
  the ``task`` (``instance_segmentation`` when the graph has a ``masks`` output, else
  ``detection``), the class names, the preprocessing contract and the upload limits.
* ``GET /metrics``: Prometheus text exposition of ``cvops_requests_total{status}``,
  ``cvops_request_latency_seconds`` (successful predictions: decode + inference),
  ``cvops_errors_total{reason}``, ``cvops_batch_size``, ``cvops_drift_detected``,
  ``cvops_drift_feature{feature}`` and ``cvops_drift_checks_total``.

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

**Swaps.** The model is held in a :class:`ModelSlot`: each request takes
the current :class:`Served` model once and keeps it from decode to answer,
so a swap (``app.state.load``, after the new model answered one warm-up
inference) changes the model of the next requests only; the replaced one
closes its batcher when its last request is answered. Every answer's
``model`` is the export that computed it.

**Isolation.** Each request decodes and preprocesses (letterbox, normalise) its
image in its own worker thread; only ready tensors reach the
:class:`MicroBatcher`, which runs the network on up to ``max_batch`` of them at
once. When a batched run still raises, each image is run alone, so only the
culprit's request fails.

**Decode budget.** A decode reserves, before any pixel is decoded, an estimate
of its peak memory from the image header (:func:`decode_cost`)::

    width * height * (2 * stored + work + 3) + 2 MiB

where ``stored`` is the bytes per pixel Pillow keeps for the decoded mode (1 for
1/L/P, 2 for I;16, 4 for RGB, RGBA, CMYK, LA, I, F, ...), counted twice for the
EXIF-rotated copy; ``work`` the numpy intermediates of the conversion to 8-bit
(3 for RGB, 2 for 1/L/LA, 5 for I;16, 9 for I/F, 7 for the others: a Pillow
RGB copy + its array); 3 the BGR array the model gets; 2 MiB the decoder's
own buffers. Measured (peak RSS of a decode, 6 MP): RGB JPEG 80.0 MiB for an
estimate of 82.1, RGBA PNG and CMYK JPEG 103.0 for 105.0, 16-bit PNG 45.9 for
70.7 (``tests/adversarial/test_serve_hostile.py`` checks it). A 40 MP 16-bit
PNG thus reserves about 480 MB, a 40 MP RGB JPEG 560 MB. After decoding the
reservation shrinks to the BGR array (held until the request is answered).
The sum of reservations in flight stays under ``decode_memory_mb``.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cvops.detector.runtime import MASKS, MaskFormat, OnnxDetector
from cvops.media import MAX_JPEG_SCANS, jpeg_scans
from cvops.schema import MonitorConfig, ServeConfig
from cvops.requestlog import RequestLog

logger = logging.getLogger("cvops.serve")

PREDICT = "/v1/predict"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
FIELD = "image"
JPEG_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
PNG_TYPES = frozenset({"image/png"})
PART_TYPES = JPEG_TYPES | PNG_TYPES | {"application/octet-stream", ""}
MULTIPART = "multipart/form-data"
# 1 ms - 2 s, denser where a CPU detector usually answers
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0)
MASK_PARAM = "masks"
MASK_CHOICES = "rle (default: COCO RLE), polygon or none"
HOW = "send multipart/form-data with a file field 'image', or a raw body with Content-Type image/jpeg or image/png"
DISCONNECTED = 499  # nginx's "client closed request": recorded, never sent to anyone
MiB = 2**20

DriftFn = Callable[[list[dict]], dict[str, float]]


class ApiError(Exception):
    """A request the server refuses (4xx) or fails (5xx), answered as ``{"error": message}``.

    Args:
        status: the HTTP status code.
        reason: a short machine-readable reason, the ``reason`` label of
            ``cvops_errors_total`` and the ``error`` of the logged record.
        message: the human-readable explanation sent back (no internal detail).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers


def error_id() -> str:
    """A short id tying a 500 answer to its detail in the server log."""
    return uuid.uuid4().hex[:12]


_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?|[\w.-]+\.(?:py|pyx|cpp|cc|c|h|so)\b")


def clean(text: str, limit: int = 200) -> str:
    """A library's error text safe to send back: object reprs and file paths removed, cut to ``limit``."""
    text = _PATH.sub("<path>", _OBJECT_REPR.sub("<object>", str(text)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

#: Bytes per pixel Pillow stores for a decoded mode (its 8-bit multi-band modes use 4).
STORED_BPP = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Bytes per pixel of the numpy intermediates of :func:`to_bgr` (see the module docstring).
WORK_BPP = {"RGB": 3, "1": 2, "L": 2, "LA": 2, "I;16": 5, "I;16L": 5, "I;16B": 5, "I;16N": 5, "I": 9, "F": 9}


#: Decoder state and row buffers, on top of the pixels.
DECODER_BYTES = 2 * 2**20
#: Bytes per image pixel that answering one instance mask may need (a mask model), on top of the decoded
#: pixels: its region (1), the RLE's padded copy and column changes (3); polygons add their outline grid at
#: twice the resolution and OpenCV's copy of it (5). Held in the decode budget until the answer.
MASK_WORK_BPP = {"rle": 4, "none": 4, "polygon": 9}


def decode_cost(width: int, height: int, mode: str) -> int:
    """The estimated peak bytes of decoding a ``width x height`` image of a Pillow ``mode`` into BGR."""
    return int(width) * int(height) * (2 * STORED_BPP.get(mode, 4) + WORK_BPP.get(mode, 7) + 3) + DECODER_BYTES


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
    if mode.startswith("I;16"):
        gray = (np.asarray(image) >> 8).astype(np.uint8)
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    if mode in ("I", "F"):  # 32-bit integer (16-bit PNG in older Pillow) or float
        a = np.clip(np.asarray(image), 0, 255 if mode == "F" else 65535)
        if mode == "I":
            a >>= 8
        return np.ascontiguousarray(cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_GRAY2BGR))
    if mode in ("1", "L", "LA"):
        gray = np.asarray(image if mode == "L" else image.convert("L"))
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # a contiguous copy; numpy's rgb[..., ::-1] copy costs ~40x more


def open_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> tuple[Any, str]:
    """Read the header of JPEG or PNG bytes and check it; no pixel is decoded yet.

    Args:
        data: the uploaded bytes.
        max_pixels: the largest ``width * height`` accepted.
        max_aspect_ratio: the largest long side / short side accepted (None: any).

    Returns:
        ``(image, "JPEG" | "PNG")``: the opened, not yet loaded, ``PIL.Image.Image``.

    Raises:
        ApiError: 400 for empty, unrecognised or unreadable data and extreme aspect
            ratios; 413 when the header declares more than ``max_pixels`` pixels.
    """
    from PIL import Image

    if not data:
        raise ApiError(400, "empty_body", f"the request carries no image bytes; {HOW}")
    fmt = sniff(data)
    if fmt is None:
        raise ApiError(400, "bad_image", f"the {len(data)} bytes sent are not a JPEG or PNG image "
                                         f"(unrecognised signature {data[:8].hex()})")
    scans = jpeg_scans(data) if fmt == "JPEG" else 0
    if scans > MAX_JPEG_SCANS:
        raise ApiError(400, "too_many_scans", f"the JPEG image has {scans} scans; at most {MAX_JPEG_SCANS} are "
                                              "decoded (a progressive JPEG has about 10): re-encode it")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as e:
        raise _too_many(fmt, max_pixels, f"too large to decode ({clean(e)})") from e
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        if _truncated(e):
            raise ApiError(400, "truncated_image", f"the {fmt} image ({len(data)} bytes) ends inside its header "
                                                   f"(truncated upload?): {clean(e)}") from e
        raise ApiError(400, "bad_image", f"cannot read the {fmt} image header: {clean(e)}") from e
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ApiError(400, "bad_image", f"the {fmt} image declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise _too_many(fmt, max_pixels, f"{w}x{h} = {w * h} pixels")
    ratio = max(w, h) / min(w, h)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        raise ApiError(400, "aspect_ratio", f"the {fmt} image is {w}x{h}, an aspect ratio of {ratio:.6g}:1; the "
                                            f"limit is {max_aspect_ratio:g}:1 (serve.max_aspect_ratio): crop or "
                                            "tile the image, or raise serve.max_aspect_ratio")
    return image, fmt


def _too_many(fmt: str, max_pixels: int, what: str) -> ApiError:
    return ApiError(413, "too_many_pixels", f"the {fmt} image is {what}; the limit is {max_pixels} pixels "
                                            "(width x height, serve.max_pixels): send a smaller image")


def load_bgr(image: Any, fmt: str, size: int) -> np.ndarray:
    """Decode an opened image completely into BGR ``uint8``, its EXIF orientation applied.

    Raises:
        ApiError: 400 when the data does not decode completely (truncated, corrupt).
    """
    from PIL import Image, ImageOps

    try:
        image.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is off by default)
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"the {fmt} image is too large to decode: {clean(e)}") from e
    except Exception as e:
        truncated = _truncated(e)
        raise ApiError(400, "truncated_image" if truncated else "bad_image",
                       f"the {fmt} image ({size} bytes) does not decode completely"
                       f"{' (truncated upload?)' if truncated else ''}: {clean(e)}") from e
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # a broken EXIF block: keep the stored orientation
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
    try:
        return to_bgr(image)
    except Exception as e:  # a mode Pillow decodes but cannot convert
        raise ApiError(400, "bad_image", f"cannot convert the {fmt} image (mode {image.mode}) to 8-bit "
                                         f"color: {clean(e)}") from e


def decode_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> tuple[np.ndarray, str]:
    """Decode JPEG or PNG bytes completely, refusing oversize images before decoding pixels.

    Args:
        data: the uploaded bytes.
        max_pixels: the largest ``width * height`` accepted.
        max_aspect_ratio: the largest long side / short side accepted (None: any).

    Returns:
        ``(bgr, mime type)``: the image as BGR ``uint8`` with its EXIF
        orientation applied, and ``"image/jpeg"`` or ``"image/png"``.

    Raises:
        ApiError: see :func:`open_image` and :func:`load_bgr`.
    """
    image, fmt = open_image(data, max_pixels, max_aspect_ratio)
    return load_bgr(image, fmt, len(data)), _mime(fmt)


def mask_format(query: Any) -> MaskFormat:
    """The ``masks`` query parameter of a predict request (``rle`` when absent).

    Raises:
        ApiError: 400 when it is given more than once or is not a :class:`MaskFormat` value.
    """
    values = query.getlist(MASK_PARAM)
    if not values:
        return MaskFormat.RLE
    if len(values) > 1:
        raise ApiError(400, "bad_parameter", f"the query parameter '{MASK_PARAM}' is given {len(values)} times; "
                                             f"give it once: {MASK_PARAM}={MASK_CHOICES}")
    try:
        return MaskFormat(values[0])
    except ValueError:
        raise ApiError(400, "bad_parameter", f"invalid value {clean(values[0], 40)!r} of the query parameter "
                                             f"'{MASK_PARAM}'; valid: {MASK_CHOICES}") from None


def _mime(fmt: str) -> str:
    return "image/png" if fmt == "PNG" else "image/jpeg"


def _truncated(error: BaseException) -> bool:
    """Whether a PIL decoding error says the data ended early."""
    return isinstance(error, EOFError) or "truncated" in str(error).lower()


def _media_type(value: str | None) -> str:
    """The lower-case ``type/subtype`` of a Content-Type value ("" when missing)."""
    return (value or "").split(";", 1)[0].strip().lower()


class DecodeBudget:
    """The memory of the decodes in flight, bounded (see the module docstring).

    Args:
        total_mb: the budget, in MiB.
        wait_s: how long a decode waits for budget before it is refused with 503.
    """

    def __init__(self, total_mb: float, wait_s: float) -> None:
        if total_mb <= 0 or wait_s < 0:
            raise ValueError(f"serve.decode_memory_mb must be positive (got {total_mb}) and "
                             f"serve.decode_wait_s at least 0 (got {wait_s})")
        self.total_mb, self.total, self.wait_s = total_mb, int(total_mb * MiB), float(wait_s)
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator["Reservation"]:
        """Hold ``nbytes`` of the budget for the ``with`` block (``what`` names the image in errors).

        Raises:
            ApiError: 413 when ``nbytes`` exceeds the whole budget, 503 when the
                budget stays full for ``wait_s``.
        """
        if nbytes > self.total:
            raise ApiError(413, "decode_memory", f"decoding the {what} needs about {nbytes / MiB:.1f} MB, more than "
                                                 f"the whole decode budget of {self.total_mb:g} MB "
                                                 "(serve.decode_memory_mb): send a smaller image or raise "
                                                 "serve.decode_memory_mb")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.used + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    retry = max(1, int(round(self.wait_s)))
                    raise ApiError(503, "decode_busy", f"the server is decoding other images: the {what} needs "
                                                       f"about {nbytes / MiB:.1f} MB of the {self.total_mb:g} MB "
                                                       f"decode budget (serve.decode_memory_mb), not free within "
                                                       f"{self.wait_s:g} s (serve.decode_wait_s): retry in "
                                                       f"{retry} s", headers={"Retry-After": str(retry)})
                self._cond.wait(left)
            self.used += nbytes
        held = Reservation(self, nbytes)
        try:
            yield held
        finally:
            held.shrink(0)

    def _give_back(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


class UploadBudget:
    """The request bodies in flight (received, or held until their answer), bounded: ``serve.upload_memory_mb``.

    Used from the event loop only (bodies are read there), so a plain counter; a request that would pass the
    budget is answered 503 at once (waiting would hold its connection and its bytes).
    """

    def __init__(self, total_mb: float) -> None:
        if total_mb <= 0:
            raise ValueError(f"serve.upload_memory_mb must be positive (got {total_mb})")
        self.total_mb, self.total, self.used = total_mb, int(total_mb * MiB), 0

    def take(self, held: list[int], nbytes: int) -> None:
        """Add ``nbytes`` to one request's share (``held[0]``), or refuse the request."""
        if self.used + nbytes > self.total:
            others = (self.used - held[0]) / MiB
            raise ApiError(503, "upload_busy", f"the server holds {others:.1f} MB of other uploads; with this one's "
                                               f"{(held[0] + nbytes) / MiB:.1f} MB that passes its "
                                               f"{self.total_mb:g} MB (serve.upload_memory_mb): retry in 1 s",
                           headers={"Retry-After": "1", "Connection": "close"})
        self.used += nbytes
        held[0] += nbytes

    def give_back(self, held: list[int]) -> None:
        self.used -= held[0]
        held[0] = 0


class Reservation:
    """Bytes held in a :class:`DecodeBudget`; :meth:`shrink` gives part of them back early."""

    def __init__(self, budget: DecodeBudget, nbytes: int) -> None:
        self.budget, self.nbytes = budget, nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` held (no-op when already smaller)."""
        if nbytes < self.nbytes:
            self.budget._give_back(self.nbytes - nbytes)
            self.nbytes = nbytes


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
        self.ready = Gauge("cvops_model_ready", "1 once a model is loaded and warm", registry=r)
        self.model_swaps = Counter("cvops_model_swaps", "Models switched to after the first", registry=r)
        self.batch_size = Histogram("cvops_batch_size", "Images per inference call (micro-batching)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)


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
        self.model: Any = None  # None: every record (one model); else only that model's (after a swap)
        self.every = every
        self.metrics = metrics
        self.records: deque[dict] = deque(maxlen=window)
        self.count = 0
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None

    def retarget(self, fn: DriftFn | None, model: Any = None) -> None:
        """Check against another model's reference from now on (a swap): the window starts empty and
        takes only records of ``model`` (requests still finishing on the old model are left out)."""
        with self._lock:
            self.fn, self.model = fn, model
            self.records.clear()
            self.count = 0

    def add(self, record: dict) -> None:
        """Add one successful request's record; start a check when one is due."""
        with self._lock:
            fn = self.fn
            if fn is None or (self.model is not None and record.get("model") != self.model):
                return
            self.records.append(record)
            self.count += 1
            snapshot = list(self.records) if self.count % self.every == 0 else None
        if snapshot is None:
            return
        if not self._running.acquire(blocking=False):
            logger.info("drift check skipped: the previous one is still running")
            return
        self._thread = threading.Thread(target=self._check, args=(snapshot, fn), name="cvops-drift", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running check to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _check(self, records: list[dict], fn: DriftFn) -> None:
        try:
            result = fn(records)  # the check of the model these records came from
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


class CatchAll:
    """ASGI middleware: any exception nothing else handled becomes a JSON 500 without detail.

    The detail goes to the server log under an error id the answer names.

    Args:
        app: the wrapped ASGI application.
        on_error: called with the path of each such request.
    """

    def __init__(self, app: Any, on_error: Callable[[str], None]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            eid = error_id()
            logger.exception("unexpected error (error id %s) on %s %s", eid, scope.get("method"), scope.get("path"))
            self.on_error(scope.get("path", ""))
            if not started:
                response = JSONResponse({"error": f"internal server error; error id {eid} in the server log"},
                                        status_code=500)
                await response(scope, receive, send)


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------


class MicroBatcher:
    """Dynamic batching: concurrent requests share one call of ``run``.

    Request threads call :meth:`submit` with a ready item (a preprocessed
    image); one batching thread takes the first waiting item, collects more for
    up to ``wait_ms`` (at most ``max_batch``), calls ``run`` on all of them at
    once and hands each caller its own result. A lone request waits at most
    ``wait_ms``. When a batched call raises, every item of the batch is run
    alone, so only the items that fail by themselves get an exception.

    With ``lanes`` > 1 that many batching threads take from the one queue, so
    up to ``lanes`` batches run at once (``run`` must allow concurrent calls:
    an ONNX Runtime session does, and with one intra-op thread each call uses
    one core).

    Args:
        run: called with a list of items, returns one result per item in order
            (``OnnxDetector.detect``).
        max_batch: the most items per call.
        wait_ms: how long the first item waits for company.
        on_retry: called with the batch size when a batched call failed and its
            items are retried one by one.
        lanes: batching threads.
    """

    def __init__(self, run: Callable[[list], list], max_batch: int, wait_ms: float,
                 on_retry: Callable[[int], None] | None = None, lanes: int = 1) -> None:
        import queue

        self.run, self.max_batch, self.wait = run, max(1, int(max_batch)), max(0.0, wait_ms) / 1000
        self.on_retry = on_retry
        self.queue: "queue.Queue[tuple]" = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, name=f"cvops-batcher-{k}", daemon=True)
                        for k in range(max(1, int(lanes)))]
        for t in self.threads:
            t.start()

    def submit(self, item: Any) -> Any:
        """The result of ``run([item])``, computed in a batch with concurrent callers' items."""
        from concurrent.futures import Future

        fut: Future = Future()
        self.queue.put((item, fut))
        return fut.result()

    def _collect(self) -> list[tuple]:
        import queue

        items = [self.queue.get()]
        deadline = time.perf_counter() + self.wait
        while len(items) < self.max_batch and items[-1][0] is not _STOP:  # one stop per lane: take no other's
            left = deadline - time.perf_counter()
            try:
                items.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def close(self) -> None:
        """Stop the lanes once the items queued so far are answered (no caller may submit after this)."""
        for _ in self.threads:
            self.queue.put((_STOP, None))

    def _loop(self) -> None:
        while True:
            items = self._collect()
            stop = any(item is _STOP for item, _ in items)
            items = [one for one in items if one[0] is not _STOP]
            if items:
                self._run_batch(items)
            if stop:
                return

    def _run_batch(self, items: list[tuple]) -> None:
        try:
            results = self.run([item for item, _ in items])
            if len(results) != len(items):
                raise RuntimeError(f"run returned {len(results)} results for {len(items)} items")
        except Exception as e:
            if len(items) == 1:
                items[0][1].set_exception(e)
                return
            logger.warning("a batch of %d images failed (%s: %s); running each alone", len(items),
                           type(e).__name__, e)
            if self.on_retry is not None:
                self.on_retry(len(items))
            for one in items:
                self._run_batch([one])
            return
        for (_, fut), r in zip(items, results):
            fut.set_result(r)


_STOP = object()


class Served:
    """One loaded model as the application serves it: its detector, its batcher, what ``/v1/model`` says.

    Requests hold it from decode to answer (:meth:`ModelSlot.hold`), so a swap
    never changes the model under a request in flight; a retired model closes
    its batcher when its last request is answered.
    """

    def __init__(self, detector: Any, info: dict, cfg: ServeConfig, metrics: "ServeMetrics",
                 drift: DriftFn | None = None) -> None:
        self.detector, self.drift = detector, drift
        self.fingerprint = info.get("fingerprint")
        self.classes = list(detector.classes)
        prepare, network = _pipeline(detector)
        self.prepare = prepare

        def run(items: list) -> list:
            metrics.batch_size.observe(len(items))
            return network(items)

        def retried(n: int) -> None:
            metrics.errors.labels(reason="batch_retry").inc()

        self.run = run
        model_info = dict(info)
        self.masks = MASKS in _outputs(detector)  # an instance segmentation model
        task = "instance_segmentation" if self.masks else "detection"
        model_info.update(task=task, classes=self.classes, preprocess=detector.preprocess.to_dict(),
                          fixed_batch=detector.fixed_batch,
                          limits={"max_upload_mb": cfg.max_upload_mb, "max_pixels": cfg.max_pixels,
                                  "max_aspect_ratio": cfg.max_aspect_ratio, "decode_memory_mb": cfg.decode_memory_mb,
                                  "body_timeout_s": cfg.body_timeout_s})
        if "cvops.thresholds" in getattr(detector, "metadata", {}):
            try:
                model_info.setdefault("thresholds", json.loads(detector.metadata["cvops.thresholds"]))
            except ValueError:
                pass
        self.model_info = jsonable_encoder(model_info)
        # last: a thread is started only for a model that is otherwise complete
        self.lanes = lanes_for(detector, cfg.lanes)
        self._unbatched = threading.BoundedSemaphore(self.lanes)
        self.batcher = (MicroBatcher(run, cfg.max_batch, cfg.batch_wait_ms, on_retry=retried, lanes=self.lanes)
                        if cfg.max_batch > 1 else None)
        self._users = 0
        self._retired = False
        self._lock = threading.Lock()

    def infer(self, item: Any) -> Any:
        if self.batcher is not None:
            return self.batcher.submit(item)
        with self._unbatched:  # serve.max_batch=1: still at most `lanes` inferences at once, not one per request
            return self.run([item])[0]

    def _enter(self) -> None:
        with self._lock:
            self._users += 1

    def _exit(self) -> None:
        with self._lock:
            self._users -= 1
            done = self._retired and self._users == 0
        if done:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            done = self._users == 0
        if done:
            self._close()

    def _close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class ModelSlot:
    """The model being served now; :meth:`swap` replaces it atomically (the old one finishes its requests)."""

    def __init__(self) -> None:
        self._current: Served | None = None
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> Served | None:
        return self._current

    @contextmanager
    def hold(self) -> Iterator[Served]:
        """The current model, kept for the caller's request even if a swap happens meanwhile.

        Raises:
            ApiError: 503 when no model is loaded yet.
        """
        with self._lock:
            served = self._current
            if served is not None:
                served._enter()
        if served is None:
            raise ApiError(503, "not_ready", "no model is loaded yet (the server follows a registry alias that is "
                                             "not set, or its first model is loading); /readyz says when",
                           headers={"Retry-After": "2"})
        try:
            yield served
        finally:
            served._exit()

    def swap(self, new: Served) -> Served | None:
        """Serve ``new`` from the next request on; returns the model it replaced (retired)."""
        with self._lock:
            old, self._current = self._current, new
            self.swaps += old is not None
        if old is not None:
            old.retire()
        return old


def lanes_for(detector: Any, lanes: int) -> int:
    """How many batches of ``detector`` may run at once: ``lanes`` (``serve.lanes``, resolved by
    :func:`cvops.serve.server.serve`; 0 here: 1) for an ONNX Runtime session on the CPU, else 1 (a TensorRT
    engine's context, a GPU)."""
    providers = getattr(getattr(detector, "session", None), "get_providers", lambda: [])()
    return max(1, int(lanes)) if providers == ["CPUExecutionProvider"] else 1


def _pipeline(detector: Any) -> tuple[Callable[[np.ndarray], Any], Callable[[list], list]]:
    """``(prepare, run)``: the per-request preprocessing and the (batched) network call of a detector.

    A detector with ``detect`` (:class:`OnnxDetector`) preprocesses in the
    request's thread; one without it (an older interface) preprocesses inside
    ``predict``, in the batch, where a failing image is still retried alone.
    """
    if callable(getattr(detector, "detect", None)):
        return detector.preprocess.prepare, detector.detect
    return (lambda bgr: bgr), detector.predict


def _outputs(detector: Any) -> list[str]:
    """The graph outputs a detector returns: ``OnnxDetector.outputs``, else its TensorRT engine's (``EngineDetector``
    wraps a ``TrtDetector``); none known: a box-only model."""
    for holder in (detector, getattr(detector, "engine", None)):
        outputs = getattr(holder, "outputs", None)
        if isinstance(outputs, (list, tuple)):
            return list(outputs)
    return []


def create_app(detector: OnnxDetector | None, cfg: ServeConfig, *, info: dict, log: RequestLog | None,
               token: str | None = None, drift: DriftFn | None = None,
               drift_window: int = MonitorConfig.drift_window, drift_every: int = MonitorConfig.drift_every,
               reload: Callable[[], dict] | None = None) -> FastAPI:
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
            ``drift_every``); see :class:`DriftWatch` for what its result sets.
        reload: what ``POST /v1/admin/reload`` calls (in a worker thread): look for a new model and
            swap to it; returns the answer's JSON. None: the endpoint answers 404.

    Returns:
        The application; ``app.state.metrics`` (:class:`ServeMetrics`),
        ``app.state.drift`` (:class:`DriftWatch` or None), ``app.state.budget``
        (:class:`DecodeBudget`), ``app.state.models`` (:class:`ModelSlot`) and
        ``app.state.load(detector, info, drift=None)`` (warm it, then serve it) are exposed for callers.
    """
    from cvops.drift.stats import image_stats

    max_upload_mb, max_pixels, max_aspect_ratio = cfg.max_upload_mb, cfg.max_pixels, cfg.max_aspect_ratio
    body_timeout_s = cfg.body_timeout_s
    window = drift_window
    if cfg.upload_memory_mb < max_upload_mb:
        raise ValueError(f"serve.upload_memory_mb ({cfg.upload_memory_mb}) must be at least serve.max_upload_mb "
                         f"({max_upload_mb}): one upload of the largest size must fit")
    if max_upload_mb <= 0 or max_pixels <= 0 or max_aspect_ratio < 1 or body_timeout_s <= 0:
        raise ValueError(f"serve.max_upload_mb ({max_upload_mb}), serve.max_pixels ({max_pixels}) and "
                         f"serve.body_timeout_s ({body_timeout_s}) must be positive and serve.max_aspect_ratio "
                         f"({max_aspect_ratio}) at least 1")
    request_log = log
    max_bytes = int(max_upload_mb * MiB)
    metrics = ServeMetrics()
    budget = DecodeBudget(cfg.decode_memory_mb, cfg.decode_wait_s)
    uploads = UploadBudget(cfg.upload_memory_mb)
    watch = DriftWatch(drift, window, drift_every, metrics) if drift is not None or reload is not None else None
    models = ModelSlot()
    swapping = threading.Lock()

    def load(new_detector: Any, new_info: dict, new_drift: DriftFn | None = None) -> Served:
        """Serve ``new_detector`` from the next request on (warm it first: a model that fails does not go live)."""
        pre = new_detector.preprocess
        new_detector.predict([np.zeros((pre.height, pre.width, 3), np.uint8)] * (new_detector.fixed_batch or 1))
        served = Served(new_detector, new_info, cfg, metrics, new_drift)
        with swapping:  # the drift window and the model change together
            if watch is not None:
                watch.retarget(new_drift, served.fingerprint)
            replaced = models.swap(served)
        if replaced is not None:
            metrics.model_swaps.inc()
        metrics.ready.set(1)
        logger.info("serving model %s", served.fingerprint)
        return served

    if detector is not None:
        served0 = Served(detector, info, cfg, metrics, drift)
        models.swap(served0)
        metrics.ready.set(1)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if watch is not None:
            watch.join(timeout=10)
        if request_log is not None:
            request_log.close()

    app = FastAPI(title="cvops detector", version=str(info.get("fingerprint") or "unknown"), lifespan=lifespan)
    app.state.metrics = metrics
    app.state.drift = watch
    app.state.detector = detector
    app.state.budget = budget
    app.state.models = models
    app.state.load = load

    def refused(path: str) -> None:
        metrics.errors.labels(reason="unauthorized").inc()
        if path == PREDICT:
            metrics.requests.labels(status="401").inc()

    def crashed(path: str) -> None:
        metrics.errors.labels(reason="internal").inc()
        if path == PREDICT:
            metrics.requests.labels(status="500").inc()

    if token:
        app.add_middleware(BearerAuth, token=token, on_reject=refused)
    app.add_middleware(CatchAll, on_error=crashed)  # outermost: also around the token check

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.labels(reason=exc.reason).inc()
        if request.url.path == PREDICT:
            metrics.requests.labels(status=str(exc.status)).inc()
        headers = dict(exc.headers or {})
        if 400 <= exc.status < 500:  # often answered before the body ended: the rest of it must not hold the
            headers["Connection"] = "close"  # connection (uvicorn re-arms no timer for a body nobody reads)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.errors.labels(reason=f"http_{exc.status_code}").inc()
        return JSONResponse({"error": clean(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(reason="validation").inc()
        return JSONResponse({"error": f"invalid request: {clean(exc.errors())}"}, status_code=422)

    async def read_body(request: Request, held: list[int]) -> bytes:
        """The request body within ``body_timeout_s``, refused (413) as soon as it exceeds ``max_bytes``, its
        bytes counted in ``held`` against the upload budget as they arrive (503 when it is full)."""
        limit = f"the limit is {max_upload_mb:g} MB ({max_bytes} bytes, serve.max_upload_mb): send a smaller file"
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "bad_request", f"invalid Content-Length header {clean(length, 40)!r}") from None
            if declared > max_bytes:
                raise ApiError(413, "too_large", f"the request body is {declared} bytes; {limit}")
        body = bytearray()
        try:
            with anyio.fail_after(body_timeout_s):
                async for chunk in request.stream():
                    uploads.take(held, len(chunk))
                    body += chunk
                    if len(body) > max_bytes:
                        raise ApiError(413, "too_large", f"the request body is over {max_bytes} bytes; {limit}")
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {body_timeout_s:g} s "
                                                f"({len(body)} bytes received; serve.body_timeout_s): send it "
                                                "in one go, or raise serve.body_timeout_s") from None
        except ClientDisconnect:
            logger.info("client disconnected after %d bytes of its request body", len(body))
            raise ApiError(DISCONNECTED, "client_disconnect",
                           f"the client disconnected after {len(body)} bytes of the body") from None
        return bytes(body)

    async def image_bytes(request: Request, media: str, held: list[int]) -> bytes:
        """The image bytes of a raw or multipart request (their memory counted in ``held``)."""
        if media not in JPEG_TYPES | PNG_TYPES | {MULTIPART}:
            got = f"Content-Type {clean(media, 80)!r}" if media else "no Content-Type"
            raise ApiError(415, "unsupported_media_type", f"unsupported media type: the request has {got}; {HOW}")
        body = await read_body(request, held)
        if media != MULTIPART:
            return body
        if not body:
            raise ApiError(400, "empty_body", f"the request body is empty; {HOW}")
        uploads.take(held, len(body))  # the parsed part is a second copy

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
        except Exception as e:  # MultiPartException / HTTPException(400) / parser errors
            detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e) or type(e).__name__
            raise ApiError(400, "bad_multipart", f"malformed multipart/form-data body: {clean(detail)}; {HOW}") from e
        try:
            part = form.get(FIELD)
            if not isinstance(part, UploadFile):
                what = "has no field" if part is None else "has a text field, not a file,"
                raise ApiError(400, "missing_image", f"the multipart body {what} named '{FIELD}'; {HOW}")
            part_media = _media_type(part.content_type)
            if part_media not in PART_TYPES:
                raise ApiError(415, "unsupported_media_type",
                               f"unsupported media type: the '{FIELD}' part has Content-Type "
                               f"{clean(part_media, 80)!r}; send image/jpeg or image/png")
            return await part.read()
        finally:
            await form.close()

    def handle(data: bytes, started: float, upload: str, masks: MaskFormat) -> dict[str, Any]:
        """Decode (within the budget), preprocess, detect, log: runs in the thread pool, on one model
        from start to answer (a swap meanwhile serves the next request)."""
        with models.hold() as served:
            image, fmt = open_image(data, max_pixels, max_aspect_ratio)
            w, h = image.size
            # a mask model's answer works on masks as large as the image, one at a time: held too
            mask_work = w * h * MASK_WORK_BPP[masks.value] if served.masks else 0
            need = max(decode_cost(w, h, image.mode), w * h * 3 + mask_work)
            with budget.reserve(need, f"{w}x{h} {fmt} image (mode {image.mode})") as held:
                bgr = load_bgr(image, fmt, len(data))
                del image
                held.shrink(bgr.nbytes + mask_work)  # the decoded pixels stay until the answer (statistics, sample)
                try:
                    item = served.prepare(bgr)  # in this request's thread: a failure here is this request's alone
                except Exception as e:
                    raise failed("preprocessing", e, _mime(fmt), served.fingerprint) from e
                try:
                    dets = served.infer(item)
                except Exception as e:
                    raise failed("inference", e, _mime(fmt), served.fingerprint) from e
                return answer(served, bgr, dets, _mime(fmt), started, upload, masks)

    def failed(stage: str, error: Exception, mime: str, fingerprint: Any = None) -> ApiError:
        """Log a failure of the server's own work under an error id; the answer carries the id only."""
        eid = error_id()
        logger.error("%s failed (error id %s): %s: %s", stage, eid, type(error).__name__, error,
                     exc_info=(type(error), error, error.__traceback__))
        log_failure(500, stage, mime, fingerprint=fingerprint)
        return ApiError(500, stage, f"{stage} failed; error id {eid} in the server log")

    def answer(served: Served, bgr: np.ndarray, dets: Any, mime: str, started: float, upload: str,
               masks: MaskFormat = MaskFormat.RLE) -> dict[str, Any]:
        """The response of a successful prediction, recorded in the log, the drift window and the metrics
        (masks encoded here, in the request's thread; the record keeps their areas only)."""
        fingerprint = served.fingerprint
        detections = dets.to_json(served.classes, masks)
        logged = detections
        if getattr(dets, "masks", None) is not None and masks is not MaskFormat.NONE:
            logged = [{k: v for k, v in d.items() if k not in ("mask", "polygon")} for d in detections]
        h, w = bgr.shape[:2]
        latency_ms = (time.perf_counter() - started) * 1000
        rid = uuid.uuid4().hex
        record = {"id": rid, "status": 200, "latency_ms": round(latency_ms, 3), "content_type": mime,
                  "upload": upload, **image_stats(bgr), "width": w, "height": h, "model": fingerprint,
                  "detections": logged}
        if dets.embedding is not None:  # what the monitor's embedding test compares
            record["embedding"] = [round(float(v), 5) for v in dets.embedding]
        if request_log is not None:
            try:  # the decoded pixels, re-encoded without the upload's metadata if sampled
                request_log.append(record, image=bgr, fmt="png" if mime == "image/png" else "jpg")
            except Exception:  # a full disk must not take predictions down
                logger.exception("could not write the request log")
                metrics.errors.labels(reason="request_log").inc()
        if watch is not None:
            watch.add(record)
        metrics.latency.observe(latency_ms / 1000)
        metrics.requests.labels(status="200").inc()
        return {"id": rid, "detections": detections, "width": w, "height": h, "latency_ms": round(latency_ms, 3),
                "model": fingerprint}

    def log_failure(status: int, reason: str, content_type: str, started: float | None = None,
                    fingerprint: Any = None) -> None:
        if request_log is None:
            return
        if fingerprint is None and models.current is not None:
            fingerprint = models.current.fingerprint
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
        held = [0]  # this request's bytes in the upload budget, given back when it is answered
        try:
            masks = mask_format(request.query_params)  # before the body: a bad parameter costs no upload
            data = await image_bytes(request, media, held)
            result = await run_in_threadpool(handle, data, started, "multipart" if media == MULTIPART else "raw",
                                             masks)
        except ApiError as e:
            if e.status != 500:  # a 500 is logged where it happened (failed())
                await run_in_threadpool(log_failure, e.status, e.reason, media[:100], started)
            raise
        finally:
            uploads.give_back(held)
        return JSONResponse(result)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        served = models.current
        if served is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ready", "model": served.fingerprint})

    @app.get("/v1/model")
    async def model() -> JSONResponse:
        served = models.current
        if served is None:
            raise ApiError(503, "not_ready", "no model is loaded yet; /readyz says when", headers={"Retry-After": "2"})
        return JSONResponse(served.model_info)

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
            metrics.errors.labels(reason="reload").inc()
            raise ApiError(500, "reload", f"reload failed ({type(e).__name__}: {clean(str(e))}); the previous "
                                          f"model is still served; error id {eid} in the server log") from e
        return JSONResponse(jsonable_encoder(result))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
