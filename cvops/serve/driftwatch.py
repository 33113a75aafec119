"""Live drift gauges: the last requests of the served model from each source, checked against its reference.

:class:`DriftWatch` keeps the records of the last ``monitor.drift_window``
successful predictions of each source (:mod:`cvops.serve.sources`) and, every
``monitor.drift_every`` of them, runs the check (:class:`cvops.drift.gauges.DriftGauges`:
drift and the precision estimate) on that source's window in a background thread;
its result sets the ``cvops_drift_*`` and ``cvops_*_precision`` gauges of
:class:`cvops.serve.metrics.ServeMetrics`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable

import numpy as np

from cvops.serve.metrics import ServeMetrics
from cvops.serve.sources import DEFAULT

logger = logging.getLogger("cvops.serve")

#: A drift check: the window's records -> ``{name: value}``.
DriftFn = Callable[[list[dict]], dict[str, float]]


class DriftWatch:
    """Keeps the last ``window`` records of each source and runs ``fn`` on a source's window every ``every``
    of its records.

    The check runs in a background thread, one at a time: a check due while another runs waits for that
    source's next record (it is not lost).

    Args:
        fn: called with a window's records (None: no check until :meth:`retarget` gives one); returns
            ``{name: value}``. ``drift_detected`` (or ``detected``) sets ``cvops_drift_detected{source}``,
            ``precision/<class>`` sets ``cvops_estimated_precision{class, source}``, ``reference/<class>``
            sets ``cvops_reference_precision{class}``, every other numeric value sets
            ``cvops_drift_feature{feature=name, source}``.
        window: number of records kept per source.
        every: run a source's check after this many of its records.
        metrics: where the results go.
    """

    def __init__(self, fn: DriftFn | None, window: int, every: int, metrics: ServeMetrics) -> None:
        if window < 1 or every < 1:
            raise ValueError(f"drift window ({window}) and drift_every ({every}) must be at least 1")
        self.fn = fn
        self.model: Any = None  # None: every record (one model); else only that model's (after a swap)
        self.window, self.every = window, every
        self.metrics = metrics
        self.records: dict[str, deque[dict]] = {}  # source -> its last records
        self.count: dict[str, int] = {}  # source -> records since its last check started
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None

    def retarget(self, fn: DriftFn | None, model: Any = None) -> None:
        """Check against another model's reference from now on (a swap): the windows start empty and
        take only records of ``model`` (requests still finishing on the old model are left out)."""
        with self._lock:
            self.fn, self.model = fn, model
            self.records.clear()
            self.count.clear()
            m = self.metrics  # the old model's verdicts are not the new one's
            for gauge in (m.drift_detected, m.drift_feature, m.estimated_precision, m.reference_precision):
                gauge.clear()

    def add(self, record: dict) -> None:
        """Add one successful request's record (its ``source``: the window it enters); start a check when due."""
        source = str(record.get("source") or DEFAULT)
        with self._lock:
            fn = self.fn
            if fn is None or (self.model is not None and record.get("model") != self.model):
                return
            window = self.records.get(source)
            if window is None:
                window = self.records[source] = deque(maxlen=self.window)
            window.append(record)
            self.count[source] = self.count.get(source, 0) + 1
            if self.count[source] < self.every:
                return
            if not self._running.acquire(blocking=False):
                return  # another check runs: this source's next record tries again
            self.count[source] = 0
            snapshot = list(window)
        self._thread = threading.Thread(target=self._check, args=(snapshot, fn, source), name="cvops-drift",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running check to finish."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _check(self, records: list[dict], fn: DriftFn, source: str) -> None:
        m = self.metrics
        try:
            result = fn(records)  # the check of the model these records came from
            for name, value in dict(result).items():
                if not isinstance(value, (bool, int, float, np.number, np.bool_)):
                    continue
                if name in ("drift_detected", "detected"):
                    m.drift_detected.labels(source=source).set(float(value))
                elif name.startswith("precision/"):
                    m.estimated_precision.labels(**{"class": name.split("/", 1)[1]}, source=source).set(float(value))
                elif name.startswith("reference/"):
                    m.reference_precision.labels(**{"class": name.split("/", 1)[1]}).set(float(value))
                else:
                    m.drift_feature.labels(feature=str(name), source=source).set(float(value))
            m.drift_checks.inc()
        except Exception:
            logger.exception("drift check failed")
            m.errors.labels(reason="drift_check").inc()
        finally:
            self._running.release()
