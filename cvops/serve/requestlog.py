"""The serving request log: append-only JSON Lines, rotated by size, with sampled images.

Layout of a log directory::

    requests.jsonl                              # the current file, one JSON object a line
    requests.20250101T120000123456Z.1.jsonl     # rotated files: UTC time of the rotation, sequence number
    images/<id>.jpg | images/<id>.png           # the sampled request images
    .requests.lock                              # inter-process lock (several uvicorn workers)

Every line is one complete record written with a single ``write`` on a file
opened for appending, so a server killed mid-write leaves at most one partial
line at the end of the file; :func:`read_log` skips it (and counts it), and the
next :meth:`RequestLog.append` starts on a fresh line so the next record is not
glued to it.

A record written by the server (:mod:`cvops.serve.app`) has the keys ``id``,
``time`` (ISO 8601, UTC), ``status`` (the HTTP status), ``latency_ms``,
``content_type``, ``model`` and, for a successful prediction, ``upload``
(``"multipart"`` or ``"raw"``), ``width``, ``height``, the
flat image statistics of :func:`cvops.monitor.drift.image_stats` and
``detections`` (a list of ``{"box", "score", "label", "class"}``); a sampled
request also has ``image_path`` (relative to the log directory). A failed
request has ``error`` (a short reason) instead of statistics and detections.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

try:  # POSIX: serialise appends and rotation between worker processes too
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per log directory
    fcntl = None  # type: ignore[assignment]

CURRENT = "requests.jsonl"
IMAGES = "images"
_ROTATED = re.compile(r"^requests\.(\d{8}T\d{6}\d*Z)\.(\d+)\.jsonl$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def image_extension(data: bytes) -> str:
    """``"png"`` for PNG bytes, else ``"jpg"`` (the server only accepts JPEG and PNG)."""
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays made plain and non-finite floats made ``None``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _jsonable(value.tolist())
    return str(value)


def log_files(directory: str | Path) -> list[Path]:
    """The log files of a directory, oldest first: the rotated files, then ``requests.jsonl``.

    Args:
        directory: a request log directory.

    Returns:
        Existing files only; an empty list when the directory does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    rotated = []
    for p in directory.iterdir():
        m = _ROTATED.match(p.name)
        if m and p.is_file():
            rotated.append(((m.group(1), int(m.group(2))), p))
    files = [p for _, p in sorted(rotated)]
    if (directory / CURRENT).is_file():
        files.append(directory / CURRENT)
    return files


def read_log(directory: str | Path) -> tuple[list[dict], int]:
    """All records of a request log directory, oldest first.

    Lines that are not a complete JSON object (a partial last line of a killed
    server, a corrupted line) are skipped and counted; blank lines are ignored.

    Args:
        directory: a request log directory written by :class:`RequestLog`.

    Returns:
        ``(records, skipped)``: the records in write order and the number of
        lines skipped.
    """
    records: list[dict] = []
    skipped = 0
    for path in log_files(directory):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # rotated away between listing and reading
            continue
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:  # includes UnicodeDecodeError
                skipped += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                skipped += 1
    return records, skipped


class RequestLog:
    """A thread- (and process-) safe append-only JSON Lines request log.

    Args:
        directory: where ``requests.jsonl``, the rotated files and ``images/`` go
            (created if missing).
        max_bytes: rotate ``requests.jsonl`` before a record would make it larger
            than this (a single larger record still goes into a file of its own).
        sample_rate: the probability of keeping a request's image bytes.
        seed: seed of the sampling random number generator.

    Raises:
        ValueError: ``max_bytes`` is not positive or ``sample_rate`` is outside [0, 1].
    """

    def __init__(self, directory: str | Path, max_bytes: int = 64 * 2**20, sample_rate: float = 0.1,
                 seed: int = 0) -> None:
        if max_bytes <= 0:
            raise ValueError(f"RequestLog: max_bytes must be positive, got {max_bytes}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"RequestLog: sample_rate must be in [0, 1], got {sample_rate}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CURRENT
        self.images = self.directory / IMAGES
        self.max_bytes = int(max_bytes)
        self.sample_rate = float(sample_rate)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._lock_fd: int | None = None

    def append(self, record: dict, image: bytes | None = None) -> str:
        """Write one record as a line (and, sampled, its image).

        Args:
            record: JSON-serialisable values (numpy values are converted, NaN and
                infinities become ``null``); ``id`` (uuid4 hex) and ``time`` (ISO
                UTC) are added when absent. The caller's dict is not modified.
            image: the encoded request image (JPEG or PNG bytes); kept as
                ``images/<id>.<jpg|png>`` with probability ``sample_rate``, and the
                record then gets ``image_path`` relative to the log directory.

        Returns:
            The record's id.
        """
        rec = dict(record)
        rec.setdefault("id", uuid.uuid4().hex)
        rec.setdefault("time", utc_now())
        rid = str(rec["id"])
        with self._lock:
            if image and self.sample_rate > 0 and self._rng.random() < self.sample_rate:
                name = rid if _SAFE_ID.match(rid) else uuid.uuid4().hex
                rel = f"{IMAGES}/{name}.{image_extension(image)}"
                self.images.mkdir(exist_ok=True)
                tmp = self.directory / f"{rel}.tmp"
                tmp.write_bytes(image)
                os.replace(tmp, self.directory / rel)
                rec["image_path"] = rel
            line = (json.dumps(_jsonable(rec), separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
            with self._interprocess():
                fh = self._current()
                size = os.fstat(fh.fileno()).st_size
                if size > 0 and size + len(line) > self.max_bytes:
                    self._rotate()
                    fh = self._current()
                    size = 0
                if size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n":
                    line = b"\n" + line  # a partial line of a killed writer: do not glue onto it
                fh.write(line)  # unbuffered, O_APPEND: one write call, at the end of the file
                fh.flush()
        return rid

    def close(self) -> None:
        """Close the open file handles (a later :meth:`append` reopens them)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "RequestLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _interprocess(self) -> Iterator[None]:
        """Hold an exclusive lock on ``.requests.lock`` (no-op without fcntl)."""
        if fcntl is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self.directory / ".requests.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _current(self) -> BinaryIO:
        """The open ``requests.jsonl``, reopened if another process rotated it away."""
        if self._fh is not None:
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fh
            self._fh.close()
        self._fh = open(self.path, "a+b", buffering=0)  # read too: the last-byte check
        return self._fh

    def _rotate(self) -> None:
        """Rename ``requests.jsonl`` to ``requests.<UTC time>.<n>.jsonl`` (caller holds the locks)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        seq = 1 + sum(1 for p in self.directory.iterdir() if _ROTATED.match(p.name))
        target = self.directory / f"requests.{stamp}.{seq}.jsonl"
        while target.exists():
            seq += 1
            target = self.directory / f"requests.{stamp}.{seq}.jsonl"
        os.rename(self.path, target)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
