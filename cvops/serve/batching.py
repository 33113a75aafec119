"""Dynamic batching: concurrent requests share one inference call (``serve.max_batch``, ``serve.lanes``).

**Isolation.** Each request decodes and preprocesses (letterbox, normalise) its
image in its own worker thread; only ready tensors reach the
:class:`MicroBatcher`, which runs the network on up to ``max_batch`` of them at
once. When a batched run still raises, each image is run alone, so only the
culprit's request fails.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

logger = logging.getLogger("cvops.serve")


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


def lanes_for(detector: Any, lanes: int) -> int:
    """How many batches of ``detector`` may run at once: ``lanes`` (``serve.lanes``, resolved by
    :func:`cvops.serve.server.serve`; 0 here: 1) for an ONNX Runtime session on the CPU, else 1 (a TensorRT
    engine's context, a GPU)."""
    providers = getattr(getattr(detector, "session", None), "get_providers", lambda: [])()
    return max(1, int(lanes)) if providers == ["CPUExecutionProvider"] else 1
