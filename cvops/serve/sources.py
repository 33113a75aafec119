"""Slices: the source a request names (a camera, a site, a customer), bounded for Prometheus.

A client names its source in the ``X-Cvops-Source`` header, the ``source`` query parameter or a ``source``
field of a multipart form. Metrics, drift gauges and the precision estimate are kept per source, and the
request log records it. A name is cleaned to 64 characters of ``[A-Za-z0-9._:/-]`` (anything else becomes
``_``), a request naming none is ``default``, and only the first ``serve.max_sources`` names get series of
their own: later ones are counted as ``other``, so no client can grow ``/metrics`` (or Prometheus) without
bound by sending new names.
"""

from __future__ import annotations

import re
import threading
from typing import Callable, Optional, Set

HEADER = "x-cvops-source"
DEFAULT = "default"
OTHER = "other"
MAX_LEN = 64
_ODD = re.compile(r"[^A-Za-z0-9._:/-]")


def clean(raw: Optional[str]) -> str:
    """The label a raw source name becomes (before the bound): ``default`` when empty."""
    if raw is None:
        return DEFAULT
    name = _ODD.sub("_", str(raw).strip())[:MAX_LEN].strip("_")
    return name or DEFAULT


class Sources:
    """The source labels one application hands out: the first ``limit`` names, then ``other``."""

    def __init__(self, limit: int, on_overflow: Optional[Callable[[], None]] = None) -> None:
        self.limit = max(0, int(limit))
        self.on_overflow = on_overflow
        self._known: Set[str] = set()
        self._lock = threading.Lock()
        self.overflowed = 0  # requests counted as other because the bound was reached

    def label(self, raw: Optional[str]) -> str:
        """The label of a request that named ``raw`` (None: it named none)."""
        name = clean(raw)
        if name in self._known or name == OTHER:
            return name
        with self._lock:
            if name in self._known:
                return name
            if len(self._known) < self.limit:
                self._known.add(name)
                return name
            self.overflowed += 1
        if self.on_overflow is not None:
            self.on_overflow()
        return OTHER

    def known(self) -> Set[str]:
        with self._lock:
            return set(self._known)
