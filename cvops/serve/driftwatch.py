"""Live drift gauges: the last requests of the served model, checked against its reference now and then.

:class:`DriftWatch` keeps the records of the last ``monitor.drift_window``
successful predictions and, every ``monitor.drift_every`` of them, runs the
drift check (:class:`cvops.drift.gauges.DriftGauges`) in a background thread;
its result sets the ``cvops_drift_*`` gauges of :class:`cvops.serve.metrics.ServeMetrics`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

import numpy as np

from cvops.serve.metrics import ServeMetrics

logger = logging.getLogger("cvops.serve")

#: A drift check: the window's records -> ``{name: value}``.
DriftFn = Callable[[list[dict]], dict[str, float]]


class DriftWatch:
    """Keeps the last ``window`` records and runs ``fn`` on them every ``every`` records.

    The check runs in a background thread, one at a time: when a check is due
    while the previous one still runs, it is skipped.

    Args:
        fn: called with the window's records (None: no check until :meth:`retarget` gives one); returns
            ``{name: value}``. The key ``drift_detected`` (or ``detected``) sets ``cvops_drift_detected``,
            every other numeric value sets ``cvops_drift_feature{feature=name}``.
        window: number of records kept.
        every: run a check after this many records.
        metrics: where the results go.
    """

    def __init__(self, fn: DriftFn | None, window: int, every: int, metrics: ServeMetrics) -> None:
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

