"""One prediction, from the uploaded bytes to the answer: decode within the budget, detect, record.

:class:`Predictor` runs in the request's worker thread, on the one model the
request took from the slot (a swap meanwhile serves the next request). Every
request, answered or refused, is one record of the request log (the monitor
stage's input; a mask model's record keeps the mask areas, never the masks);
a successful one also enters the drift window and the latency histogram.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np

from cvops.detector.runtime import MaskFormat
from cvops.requestlog import RequestLog
from cvops.schema import ServeConfig
from cvops.serve.budget import MASK_WORK_BPP, DecodeBudget, decode_cost
from cvops.serve.decode import load_bgr, mime, open_image
from cvops.serve.driftwatch import DriftWatch
from cvops.serve.errors import ApiError, error_id
from cvops.serve.metrics import ServeMetrics
from cvops.serve.slots import ModelSlot, Served
from cvops.serve.sources import DEFAULT

logger = logging.getLogger("cvops.serve")


class Predictor:
    """Answers prediction requests and records each of them.

    Args:
        cfg: the ``serve`` config (``max_pixels``, ``max_aspect_ratio``).
        slot: the model being served.
        budget: the decode memory budget.
        metrics: the application's metrics.
        log: the request log (None: none kept).
        watch: the drift window successful requests enter (None: no drift gauges).
    """

    def __init__(self, cfg: ServeConfig, slot: ModelSlot, budget: DecodeBudget, metrics: ServeMetrics,
                 log: RequestLog | None, watch: DriftWatch | None) -> None:
        from cvops.drift.stats import image_stats

        self.max_pixels, self.max_aspect_ratio = cfg.max_pixels, cfg.max_aspect_ratio
        self.slot, self.budget, self.metrics, self.log, self.watch = slot, budget, metrics, log, watch
        self.shadow: Any = None  # a cvops.serve.shadow.Shadow: shadow traffic, off the response path
        self._image_stats = image_stats

    def predict(self, data: bytes, started: float, upload: str, masks: MaskFormat,
                source: str = DEFAULT) -> dict[str, Any]:
        """Decode (within the budget), preprocess, detect, log: runs in the thread pool, on one model
        from start to answer.

        Args:
            data: the image bytes.
            started: ``time.perf_counter()`` when the request arrived (its latency counts from there).
            upload: ``"raw"`` or ``"multipart"``, for the record.
            masks: how a mask model's masks are answered.
            source: the request's source label (:mod:`cvops.serve.sources`): its metrics and drift window.

        Returns:
            The answer's JSON.

        Raises:
            ApiError: the image is refused (see :func:`cvops.serve.decode.open_image`, the budget), or
                preprocessing or inference failed (500, logged here with an error id).
        """
        with self.slot.hold() as served:
            image, fmt = open_image(data, self.max_pixels, self.max_aspect_ratio)
            w, h = image.size
            # a mask model's answer works on masks as large as the image, one at a time: held too
            mask_work = w * h * MASK_WORK_BPP[masks.value] if served.masks else 0
            need = max(decode_cost(w, h, image.mode), w * h * 3 + mask_work)
            with self.budget.reserve(need, f"{w}x{h} {fmt} image (mode {image.mode})") as held:
                bgr = load_bgr(image, fmt, len(data))
                del image
                held.shrink(bgr.nbytes + mask_work)  # the decoded pixels stay until the answer (statistics, sample)
                try:
                    item = served.prepare(bgr)  # in this request's thread: a failure here is this request's alone
                except Exception as e:
                    raise self._failed("preprocessing", e, mime(fmt), served.fingerprint, source) from e
                try:
                    t = time.perf_counter()
                    dets = served.infer(item)
                    infer_ms = (time.perf_counter() - t) * 1000
                except Exception as e:
                    raise self._failed("inference", e, mime(fmt), served.fingerprint, source) from e
                answer = self._answer(served, bgr, dets, mime(fmt), started, upload, masks, source)
                if self.shadow is not None:  # queued for the shadow thread; the answer does not wait
                    self.shadow.offer(bgr, dets, served.classes, served.fingerprint, infer_ms)
                return answer

    def log_failure(self, status: int, reason: str, content_type: str, started: float | None = None,
                    fingerprint: Any = None, source: str = DEFAULT) -> None:
        """Record a refused or failed request (no-op without a request log)."""
        if self.log is None:
            return
        if fingerprint is None and self.slot.current is not None:
            fingerprint = self.slot.current.fingerprint
        rec: dict[str, Any] = {"status": status, "error": reason, "content_type": content_type, "model": fingerprint,
                               "source": source}
        if started is not None:
            rec["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        self._record(rec)

    def _failed(self, stage: str, error: Exception, mime_type: str, fingerprint: Any = None,
                source: str = DEFAULT) -> ApiError:
        """Log a failure of the server's own work under an error id; the answer carries the id only."""
        eid = error_id()
        logger.error("%s failed (error id %s): %s: %s", stage, eid, type(error).__name__, error,
                     exc_info=(type(error), error, error.__traceback__))
        self.log_failure(500, stage, mime_type, fingerprint=fingerprint, source=source)
        return ApiError(500, stage, f"{stage} failed; error id {eid} in the server log")

    def _answer(self, served: Served, bgr: np.ndarray, dets: Any, mime_type: str, started: float, upload: str,
                masks: MaskFormat = MaskFormat.RLE, source: str = DEFAULT) -> dict[str, Any]:
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
        record = {"id": rid, "status": 200, "latency_ms": round(latency_ms, 3), "content_type": mime_type,
                  "upload": upload, **self._image_stats(bgr), "width": w, "height": h, "model": fingerprint,
                  "source": source, "detections": logged}
        if dets.embedding is not None:  # what the monitor's embedding test compares
            record["embedding"] = [round(float(v), 5) for v in dets.embedding]
        # the decoded pixels, re-encoded without the upload's metadata if sampled
        self._record(record, image=bgr, fmt="png" if mime_type == "image/png" else "jpg")
        if self.watch is not None:
            self.watch.add(record)
        self.metrics.latency.labels(source=source).observe(latency_ms / 1000)
        self.metrics.requests.labels(status="200", source=source).inc()
        return {"id": rid, "detections": detections, "width": w, "height": h, "latency_ms": round(latency_ms, 3),
                "model": fingerprint}

    def _record(self, record: dict[str, Any], **image: Any) -> None:
        """Append to the request log; a failure to write (a full disk) is counted, never the request's failure."""
        if self.log is None:
            return
        try:
            self.log.append(record, **image)
        except Exception:
            logger.exception("could not write the request log")
            self.metrics.failed("request_log")
