"""Which model answers a request: the one in the :class:`ModelSlot` when the request starts.

**Swaps.** Each request takes the current :class:`Served` model once
(:meth:`ModelSlot.hold`) and keeps it from decode to answer, so a swap
(:meth:`ModelLoader.load`, ``app.state.load``, after the new model answered one
warm-up inference) changes the model of the next requests only; the replaced
one closes its batcher when its last request is answered. Every answer's
``model`` is the export that computed it.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
from fastapi.encoders import jsonable_encoder

from cvops.detector.runtime import LEGACY_MASKS, MASKS
from cvops.schema import ServeConfig
from cvops.serve.batching import MicroBatcher, lanes_for
from cvops.serve.driftwatch import DriftFn, DriftWatch
from cvops.serve.errors import ApiError
from cvops.serve.metrics import ServeMetrics

logger = logging.getLogger("cvops.serve")


class Served:
    """One loaded model as the application serves it: its detector, its batcher, what ``/v1/model`` says.

    Requests hold it from decode to answer (:meth:`ModelSlot.hold`), so a swap
    never changes the model under a request in flight; a retired model closes
    its batcher when its last request is answered.
    """

    def __init__(self, detector: Any, info: dict, cfg: ServeConfig, metrics: ServeMetrics,
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
            metrics.failed("batch_retry")

        self.run = run
        model_info = dict(info)
        self.masks = bool({MASKS, LEGACY_MASKS} & set(_outputs(detector)))  # an instance segmentation model
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
        """The detections of one prepared image (batched with concurrent requests' when batching is on)."""
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
        """No new requests from now on; the batcher closes once the last request in flight is answered."""
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
        """The model new requests get (None: none loaded yet)."""
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


class ModelLoader:
    """Puts models into the slot: the first one as given, every later one warmed first, then swapped in.

    Args:
        slot: where the served model lives.
        cfg: the ``serve`` config (batching, lanes, the limits ``/v1/model`` reports).
        metrics: the application's metrics (``cvops_model_ready``, ``cvops_model_swaps``, batch sizes).
        watch: the drift window, moved to each new model's drift check (None: no drift gauges).
    """

    def __init__(self, slot: ModelSlot, cfg: ServeConfig, metrics: ServeMetrics, watch: DriftWatch | None) -> None:
        self.slot, self.cfg, self.metrics, self.watch = slot, cfg, metrics, watch
        self._swapping = threading.Lock()

    def install(self, detector: Any, info: dict, drift: DriftFn | None = None) -> Served:
        """Serve ``detector``, already warm (the application's first model, whose drift check the watch has)."""
        served = Served(detector, info, self.cfg, self.metrics, drift)
        self.slot.swap(served)
        self.metrics.ready.set(1)
        self.metrics.serving(str(info.get("project") or ""), str(served.fingerprint or ""))
        return served

    def load(self, detector: Any, info: dict, drift: DriftFn | None = None) -> Served:
        """Serve ``detector`` from the next request on (warm it first: a model that fails does not go live)."""
        pre = detector.preprocess
        detector.predict([np.zeros((pre.height, pre.width, 3), np.uint8)] * (detector.fixed_batch or 1))
        served = Served(detector, info, self.cfg, self.metrics, drift)
        with self._swapping:  # the drift window and the model change together
            if self.watch is not None:
                self.watch.retarget(drift, served.fingerprint)
            replaced = self.slot.swap(served)
        if replaced is not None:
            self.metrics.model_swaps.inc()
        self.metrics.ready.set(1)
        self.metrics.serving(str(info.get("project") or ""), str(served.fingerprint or ""))
        logger.info("serving model %s", served.fingerprint)
        return served


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
