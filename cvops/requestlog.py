"""The serving request log: append-only JSON Lines, rotated by size, bounded by retention, with sampled images.

Layout of a log directory (mode 0700; every file in it 0600: owner only)::

    requests.jsonl                              # the current file, one JSON object a line
    requests.20250101T120000123456Z.1.jsonl     # rotated files: UTC time of the rotation, sequence number
    images/<id>.jpg | images/<id>.png           # the sampled request images (re-encoded, no metadata)
    .requests.lock                              # inter-process lock (several uvicorn workers)

Every line is one complete record written with a single ``write`` on a file
opened for appending, so a server killed mid-write leaves at most one partial
line at the end of the file; the readers (:func:`iter_log`, :func:`read_log`)
skip it (and count it), and the next :meth:`RequestLog.append` starts on a
fresh line so the next record is not glued to it.

**Retention.** The whole directory (log files and sampled images) is kept under
``max_total_mb`` (``serve.log_max_mb``) and nothing older than ``max_days``
(``serve.log_max_days``, by file modification time) is kept. Retention runs
when a log opens, after each rotation, and whenever this process's appends
since the last run could have crossed the size budget; it deletes the oldest
rotated files and images first and never the current file (a current file
whose last write is older than ``max_days`` is rotated first, then deleted).
The current file rotates at ``max_bytes`` or a quarter of the budget,
whichever is smaller, so retention always has older files to delete.

**Sampled images** are re-encoded from the decoded pixels (the orientation the
detections refer to, EXIF orientation applied): JPEG uploads as JPEG (quality
95), PNG uploads as PNG, with no EXIF, GPS or any other metadata of the upload.

A record written by the server (:mod:`cvops.serve.predict`) has the keys ``id``,
``time`` (ISO 8601, UTC), ``status`` (the HTTP status), ``latency_ms``,
``content_type``, ``model`` and, for a successful prediction, ``upload``
(``"multipart"`` or ``"raw"``), ``width``, ``height``, the
flat image statistics of :func:`cvops.drift.stats.image_stats` and
``detections`` (a list of ``{"box", "score", "label", "class"}``, plus ``"mask_area"`` in pixels for an
instance segmentation model: the log keeps no masks) and ``embedding``; a sampled
request also has ``image_path`` (relative to the log directory; the image may
be gone later, deleted by retention). A failed request has ``error`` (a short
reason) instead of statistics and detections.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

from cvops.schema import ServeConfig

if TYPE_CHECKING:  # numpy is imported where images are encoded: the runner reads log paths from here
    import numpy as np

try:  # POSIX: serialise appends and rotation between worker processes too
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per log directory
    fcntl = None  # type: ignore[assignment]

CURRENT = "requests.jsonl"
IMAGES = "images"
LOCK = ".requests.lock"
_ROTATED = re.compile(r"^requests\.(\d{8}T\d{6}\d*Z)\.(\d+)\.jsonl$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BLOCK = 1 << 16
DIR_MODE, FILE_MODE = 0o700, 0o600
JPEG_QUALITY = 95


def request_log_dir(log_dir: str | None, store_root: str | Path, project: str) -> Path:
    """Where ``cvops serve`` writes its request log for a recipe: ``serve.log_dir``, or
    ``<store>/requests/<project>``."""
    if log_dir:
        return Path(log_dir)
    return Path(store_root).resolve() / "requests" / str(project)


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def image_extension(data: bytes) -> str:
    """``"png"`` for PNG bytes, else ``"jpg"`` (the server only accepts JPEG and PNG)."""
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def encode_clean(image: bytes | np.ndarray, fmt: str | None = None) -> tuple[bytes, str] | None:
    """An image re-encoded from its pixels, without any metadata: ``(bytes, "jpg" | "png")``.

    Args:
        image: BGR ``uint8`` pixels, or encoded JPEG/PNG bytes (decoded first, EXIF
            orientation applied).
        fmt: ``"png"`` or ``"jpg"``; None: PNG for PNG bytes, else JPEG.

    Returns:
        None when bytes do not decode.
    """
    import cv2

    if isinstance(image, (bytes, bytearray, memoryview)):
        fmt = fmt or image_extension(bytes(image))
        import numpy as np

        image = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return None
    ext = "png" if fmt == "png" else "jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == "jpg" else []
    ok, buf = cv2.imencode(f".{ext}", image, params)
    return (buf.tobytes(), ext) if ok else None


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


def _rotated(directory: Path) -> list[Path]:
    """The rotated log files of a directory, oldest first."""
    found = []
    for p in directory.iterdir():
        m = _ROTATED.match(p.name)
        if m and p.is_file():
            found.append(((m.group(1), int(m.group(2))), p))
    return [p for _, p in sorted(found)]


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
    files = _rotated(directory)
    if (directory / CURRENT).is_file():
        files.append(directory / CURRENT)
    return files


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _lines_backward(fh: BinaryIO, end: int) -> Iterator[bytes]:
    """The lines of the first ``end`` bytes of a file, last line first, reading blocks from the end."""
    pos, tail = end, b""
    while pos > 0:
        n = min(_BLOCK, pos)
        pos -= n
        fh.seek(pos)
        lines = (fh.read(n) + tail).split(b"\n")
        tail = lines[0]
        yield from reversed(lines[1:])
    yield tail


def _lines_forward(fh: BinaryIO, end: int) -> Iterator[bytes]:
    """The lines of the first ``end`` bytes of a file, in order, reading blocks."""
    left, tail = end, b""
    while left > 0:
        block = fh.read(min(_BLOCK, left))
        if not block:
            break
        left -= len(block)
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        yield from lines
    yield tail


class LogReader:
    """The records of a request log directory, streamed file by file (see :func:`iter_log`).

    ``skipped`` counts the lines read so far that were not a complete JSON
    object (a partial last line of a killed server, a corrupted line).
    """

    def __init__(self, directory: str | Path, newest_first: bool) -> None:
        self.directory = Path(directory)
        self.newest_first = newest_first
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        if not self.directory.is_dir():
            return
        current = _open_current(self.directory)  # first: a rotation after this is not read twice
        try:
            ino = os.fstat(current.fileno()).st_ino if current else None
            rotated = [p for p in _rotated(self.directory) if ino is None or _inode(p) != ino]
            if self.newest_first:
                if current:
                    yield from self._records(current)
                for path in reversed(rotated):
                    yield from self._file(path)
            else:
                for path in rotated:
                    yield from self._file(path)
                if current:
                    yield from self._records(current)
        finally:
            if current:
                current.close()

    def _file(self, path: Path) -> Iterator[dict]:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:  # deleted by retention between listing and reading
            return
        with fh:
            yield from self._records(fh)

    def _records(self, fh: BinaryIO) -> Iterator[dict]:
        end = os.fstat(fh.fileno()).st_size  # what is there now: a line appended meanwhile is not half-read
        lines = _lines_backward(fh, end) if self.newest_first else _lines_forward(fh, end)
        for raw in lines:
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:  # includes UnicodeDecodeError
                self.skipped += 1
                continue
            if isinstance(rec, dict):
                yield rec
            else:
                self.skipped += 1


def _open_current(directory: Path) -> BinaryIO | None:
    try:
        return open(directory / CURRENT, "rb")
    except FileNotFoundError:
        return None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def iter_log(directory: str | Path, newest_first: bool = True) -> LogReader:
    """Stream the records of a request log directory without loading every file.

    Newest first reads ``requests.jsonl`` from its end, then the rotated files
    from the newest; a caller that stops early (the monitor's window) reads
    only what it needs. ``reader.skipped`` counts the unreadable lines met.

    Args:
        directory: a request log directory written by :class:`RequestLog`
            (missing: no records).
        newest_first: False: oldest first, in write order.

    Returns:
        An iterable :class:`LogReader` of record dicts.
    """
    return LogReader(directory, newest_first)


def read_log(directory: str | Path) -> tuple[list[dict], int]:
    """All records of a request log directory, oldest first, and the number of lines skipped.

    Lines that are not a complete JSON object are skipped and counted; blank
    lines are ignored. Prefer :func:`iter_log` for the newest records only.
    """
    reader = iter_log(directory, newest_first=False)
    records = list(reader)
    return records, reader.skipped


# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------


def apply_retention(directory: str | Path, max_bytes: int, max_days: float) -> dict[str, int]:
    """Delete what is older than ``max_days``, then the oldest until the directory fits ``max_bytes``.

    Only rotated log files and sampled images are deleted (oldest modification
    time first), never ``requests.jsonl``.

    Args:
        directory: a request log directory.
        max_bytes: the budget of the whole directory (log files + images).
        max_days: the oldest file kept, in days (0: no age limit).

    Returns:
        ``{"deleted": files deleted, "freed": bytes freed, "bytes": bytes left}``.
    """
    directory = Path(directory)
    candidates, total = [], 0
    for path in [*_rotated(directory), *_images(directory)]:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        candidates.append((st.st_mtime, st.st_size, path))
        total += st.st_size
    try:
        total += (directory / CURRENT).stat().st_size
    except FileNotFoundError:
        pass
    cutoff = time.time() - max_days * 86400 if max_days > 0 else None
    deleted = freed = 0
    for mtime, size, path in sorted(candidates, key=lambda c: (c[0], c[2].name)):
        if total <= max_bytes and (cutoff is None or mtime >= cutoff):
            break  # oldest first: everything after is newer and fits
        try:
            path.unlink()
        except FileNotFoundError:  # another worker was first
            pass
        deleted, freed, total = deleted + 1, freed + size, total - size
    return {"deleted": deleted, "freed": freed, "bytes": total}


def _images(directory: Path) -> list[Path]:
    images = directory / IMAGES
    if not images.is_dir():
        return []
    return [p for p in images.iterdir() if p.is_file()]


def _private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make it owner-only."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed), mode 0600."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RequestLog:
    """A thread- (and process-) safe append-only JSON Lines request log (see the module docstring).

    Args:
        directory: where ``requests.jsonl``, the rotated files and ``images/`` go
            (created if missing, made mode 0700).
        max_bytes: rotate ``requests.jsonl`` before a record would make it larger
            than this or than a quarter of ``max_total_mb`` (a single larger record
            still goes into a file of its own).
        sample_rate: the probability of keeping a request's image.
        seed: seed of the sampling random number generator.
        max_total_mb: the retention budget of the whole directory, in MiB.
        max_days: delete files older than this (0: no age limit).

    Raises:
        ValueError: a non-positive ``max_bytes`` or ``max_total_mb``, a negative
            ``max_days``, or ``sample_rate`` outside [0, 1].
    """

    def __init__(self, directory: str | Path, max_bytes: int = 64 * 2**20, sample_rate: float = 0.1,
                 seed: int = 0, max_total_mb: float = ServeConfig.log_max_mb,
                 max_days: float = ServeConfig.log_max_days) -> None:
        if max_bytes <= 0:
            raise ValueError(f"RequestLog: max_bytes must be positive, got {max_bytes}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"RequestLog: sample_rate must be in [0, 1], got {sample_rate}")
        if max_total_mb <= 0 or max_days < 0:
            raise ValueError(f"RequestLog: serve.log_max_mb must be positive (got {max_total_mb}) and "
                             f"serve.log_max_days at least 0 (got {max_days}; 0 = no age limit)")
        self.directory = Path(directory)
        _private_dir(self.directory)
        self.path = self.directory / CURRENT
        self.images = self.directory / IMAGES
        self.max_total = int(max_total_mb * 2**20)
        self.max_days = float(max_days)
        self.max_bytes = max(1, min(int(max_bytes), self.max_total // 4))
        self.sample_rate = float(sample_rate)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._lock_fd: int | None = None
        self._bytes = 0  # the directory's size at the last retention run + what this process wrote since
        self._make_private()
        with self._lock, self._interprocess():
            self._retain()

    def append(self, record: dict, image: bytes | np.ndarray | None = None, fmt: str | None = None) -> str:
        """Write one record as a line (and, sampled, its image).

        Args:
            record: JSON-serialisable values (numpy values are converted, NaN and
                infinities become ``null``); ``id`` (uuid4 hex) and ``time`` (ISO
                UTC) are added when absent. The caller's dict is not modified.
            image: the request image, BGR pixels or JPEG/PNG bytes; with probability
                ``sample_rate`` it is re-encoded without metadata (:func:`encode_clean`)
                into ``images/<id>.<jpg|png>`` and the record gets ``image_path``
                relative to the log directory.
            fmt: ``"jpg"`` or ``"png"`` for the kept image (None: PNG for PNG bytes,
                else JPEG).

        Returns:
            The record's id.
        """
        rec = dict(record)
        rec.setdefault("id", uuid.uuid4().hex)
        rec.setdefault("time", utc_now())
        rid = str(rec["id"])
        with self._lock:
            sampled = image is not None and self.sample_rate > 0 and self._rng.random() < self.sample_rate
        encoded = encode_clean(image, fmt) if sampled else None  # outside the lock: encoding takes a while
        with self._lock:
            if encoded is not None:
                data, ext = encoded
                name = rid if _SAFE_ID.match(rid) else uuid.uuid4().hex
                rel = f"{IMAGES}/{name}.{ext}"
                if not self.images.is_dir():
                    _private_dir(self.images)
                _write_private(self.directory / rel, data)
                rec["image_path"] = rel
                self._bytes += len(data)
            line = (json.dumps(_jsonable(rec), separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
            with self._interprocess():
                self._write_line(line)
                if self._bytes > self.max_total:
                    self._retain()
        return rid

    def retain(self) -> dict[str, int]:
        """Apply retention now (see :func:`apply_retention`); also done on rotation and when the budget fills."""
        with self._lock, self._interprocess():
            return self._retain()

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

    def _write_line(self, line: bytes) -> None:
        """Append one line to the current file, rotating first when it is full (caller holds the locks)."""
        fh = self._current()
        size = os.fstat(fh.fileno()).st_size
        if size > 0 and size + len(line) > self.max_bytes:
            self._rotate()
            self._retain()
            fh = self._current()
            size = 0
        if size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n":
            line = b"\n" + line  # a partial line of a killed writer: do not glue onto it
        fh.write(line)  # unbuffered, O_APPEND: one write call, at the end of the file
        fh.flush()
        self._bytes += len(line)

    def _retain(self) -> dict[str, int]:
        """Rotate a current file that is too old, then apply retention (caller holds the locks)."""
        if self.max_days > 0 and self.path.is_file():
            st = self.path.stat()
            if st.st_size and st.st_mtime < time.time() - self.max_days * 86400:
                self._rotate()
        result = apply_retention(self.directory, self.max_total, self.max_days)
        self._bytes = result["bytes"]
        return result

    def _make_private(self) -> None:
        """Owner-only modes on what an older version (or another umask) left in the directory."""
        for path in [*log_files(self.directory), *_images(self.directory), self.directory / LOCK]:
            try:
                os.chmod(path, FILE_MODE)
            except OSError:  # gone meanwhile, or not ours: retention will still bound it
                pass
        if self.images.is_dir():
            os.chmod(self.images, DIR_MODE)

    @contextmanager
    def _interprocess(self) -> Iterator[None]:
        """Hold an exclusive lock on ``.requests.lock`` (no-op without fcntl)."""
        if fcntl is None:
            yield
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._fh = os.fdopen(fd, "a+b", buffering=0)  # read too: the last-byte check
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
