"""Shadow traffic: a second model beside the live one on a fraction of requests, off the response path.

A server with ``serve.shadow_alias=staging`` follows that alias too
(:class:`cvops.serve.models.AliasFollower`) and, on every ``1/serve.shadow_rate``-th successful
request, hands the decoded image and the live answer to one background thread that runs the shadow
model and records how far the two agree: box-level precision, recall and F1 at IoU 0.5, per class,
on the boxes at or above the project's ``confidence``, and both latencies. The answer never waits for
it; when the thread is behind (``MAX_PENDING`` images queued) the request is not shadowed, and counted.

Each comparison is one line of ``<request log dir>/shadow.jsonl`` (the loop's evidence,
:func:`agreement`) and moves ``cvops_shadow_requests_total{shadow}`` and ``cvops_shadow_f1{shadow}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

logger = logging.getLogger("cvops.serve")

#: Shadowed images waiting for the shadow thread before further requests are skipped (memory bound).
MAX_PENDING = 4
SHADOW_LOG = "shadow.jsonl"


def compare(live: Any, live_classes: Sequence[str], shadow: Any, shadow_classes: Sequence[str],
            confidence: float, iou_thr: float = 0.5) -> Dict[str, Dict[str, int]]:
    """Per class ``{"tp", "fp", "fn"}`` of the shadow's confident boxes against the live ones (greedy by
    score, same class name, IoU >= ``iou_thr``)."""
    from cvops.detector.runtime import box_iou

    def pick(d: Any, classes: Sequence[str]) -> Dict[str, np.ndarray]:
        keep = np.asarray(d.scores) >= confidence
        boxes, scores = np.asarray(d.boxes)[keep], np.asarray(d.scores)[keep]
        names = [classes[int(k)] if int(k) < len(classes) else str(int(k)) for k in np.asarray(d.labels)[keep]]
        out: Dict[str, Any] = {}
        for name in set(names):
            idx = [i for i, n in enumerate(names) if n == name]
            order = sorted(idx, key=lambda i: -scores[i])
            out[name] = boxes[order]
        return out

    a, b = pick(live, live_classes), pick(shadow, shadow_classes)
    counts: Dict[str, Dict[str, int]] = {}
    for name in sorted(set(a) | set(b)):
        la, lb = a.get(name, np.zeros((0, 4))), b.get(name, np.zeros((0, 4)))
        tp = 0
        if len(la) and len(lb):
            iou = box_iou(lb, la)
            used = np.zeros(len(la), bool)
            for i in range(len(lb)):
                j = int(np.argmax(np.where(used, -1.0, iou[i])))
                if not used[j] and iou[i, j] >= iou_thr:
                    used[j] = True
                    tp += 1
        counts[name] = {"tp": tp, "fp": len(lb) - tp, "fn": len(la) - tp}
    return counts


def f1(counts: Dict[str, Dict[str, int]]) -> float:
    """Box F1 over all classes (1.0 when neither model saw anything: they agree)."""
    tp = sum(c["tp"] for c in counts.values())
    fp = sum(c["fp"] for c in counts.values())
    fn = sum(c["fn"] for c in counts.values())
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


class Shadow:
    """The shadow model of one server process (see the module docstring).

    Args:
        rate: the share of successful requests shadowed (0: none).
        confidence: boxes compared are those at or above it (the project's ``confidence``).
        log_dir: where ``shadow.jsonl`` goes (None: metrics only).
        metrics: the application's :class:`~cvops.serve.metrics.ServeMetrics`.
    """

    def __init__(self, rate: float, confidence: float, log_dir: Optional[Path], metrics: Any) -> None:
        self.rate, self.confidence, self.metrics = float(rate), float(confidence), metrics
        self.path = Path(log_dir) / SHADOW_LOG if log_dir else None
        self.model: Optional[tuple] = None  # (detector, fingerprint, classes)
        self._seen = 0
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cvops-shadow")

    def load(self, detector: Any, info: Dict[str, Any], drift: Any = None) -> None:
        """Shadow ``detector`` from now on (what :class:`~cvops.serve.models.AliasFollower` calls)."""
        self.model = (detector, str(info.get("fingerprint")), list(getattr(detector, "classes", [])))
        logger.info("shadow model: export %s", info.get("fingerprint"))

    def offer(self, bgr: np.ndarray, live: Any, live_classes: Sequence[str], live_fp: str, live_ms: float) -> bool:
        """Shadow this request if it is its turn and the thread keeps up; returns whether it was queued."""
        model = self.model
        if model is None or self.rate <= 0 or model[1] == live_fp:
            return False
        with self._lock:
            self._seen += 1
            if int(self._seen * self.rate) == int((self._seen - 1) * self.rate):
                return False  # not its turn: every 1/rate-th request
            if self._pending >= MAX_PENDING:
                self.metrics.shadow_skipped.inc()
                return False
            self._pending += 1
        self._pool.submit(self._run, model, bgr, live, list(live_classes), live_fp, live_ms)
        return True

    def _run(self, model: tuple, bgr: np.ndarray, live: Any, live_classes: List[str], live_fp: str,
             live_ms: float) -> None:
        detector, fp, classes = model
        try:
            t = time.perf_counter()
            got = detector.predict([bgr])[0]
            ms = (time.perf_counter() - t) * 1000
            counts = compare(live, live_classes, got, classes, self.confidence)
            score = f1(counts)
            self.metrics.shadow_requests.labels(shadow=fp).inc()
            self.metrics.shadow_f1.labels(shadow=fp).set(score)
            if self.path is not None:
                line = json.dumps({"time": time.time(), "live": live_fp, "shadow": fp, "f1": round(score, 4),
                                   "per_class": counts, "live_ms": round(live_ms, 3), "shadow_ms": round(ms, 3)})
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
        except Exception:  # the shadow never fails a request; a broken one is said and counted
            logger.exception("shadow model %s failed", fp)
            self.metrics.failed("shadow")
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def agreement(lines: Iterable[str], live: str, shadow: str) -> Dict[str, Any]:
    """The evidence of ``shadow.jsonl`` lines for one (live, shadow) pair: requests, mean F1, per-class
    precision/recall/F1 of the shadow against the live model, and the median latencies (bad lines skipped)."""
    per: Dict[str, Dict[str, int]] = {}
    f1s: List[float] = []
    live_ms: List[float] = []
    shadow_ms: List[float] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or rec.get("live") != live or rec.get("shadow") != shadow:
            continue
        f1s.append(float(rec.get("f1", 0.0)))
        live_ms.append(float(rec.get("live_ms", 0.0)))
        shadow_ms.append(float(rec.get("shadow_ms", 0.0)))
        for name, c in (rec.get("per_class") or {}).items():
            acc = per.setdefault(name, {"tp": 0, "fp": 0, "fn": 0})
            for k in acc:
                acc[k] += int(c.get(k, 0))
    classes = {}
    for name, c in sorted(per.items()):
        classes[name] = {**c, "f1": f1({name: c})}
    return {"requests": len(f1s), "mean_f1": float(np.mean(f1s)) if f1s else None, "per_class": classes,
            "live_ms": float(np.median(live_ms)) if live_ms else None,
            "shadow_ms": float(np.median(shadow_ms)) if shadow_ms else None}
