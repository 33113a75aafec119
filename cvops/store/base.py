"""What every artifact store is: the :class:`Store` and :class:`Builder` protocols, the :class:`Artifact` they
hand out, and the file writes both implementations share.

The contract (the same for a folder and for a bucket): an artifact lives at
``<store>/<stage>/<fingerprint>/``; its ``manifest.json`` is written last, in
one atomic step, and an artifact is *committed* exactly when its manifest
exists. Whatever lies under a fingerprint without a manifest is an unfinished
build: never reused, wiped by the next build of that fingerprint, and removed
by :func:`cvops.store.housekeeping.gc` once nobody builds it. Readers get an
:class:`Artifact` (a local directory and its manifest) whichever store holds it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from cvops.errors import StoreError

#: The file whose presence makes an artifact committed (written last, atomically).
MANIFEST = "manifest.json"
#: How the store names an artifact's folder: a fingerprint (hex). Anything else under a stage folder is not
#: an artifact (housekeeping leaves it alone).
FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write JSON so that readers see the old file or the whole new one.

    Args:
        path: The file to (re)write; its folder is created.
        data: Anything ``json.dump`` takes (other objects are written with ``str``).
        durable: fsync before the rename, so a power cut leaves the old file or the new one, never an empty one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (a no-op where the platform has no directory handles)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every regular file under ``root``, then every directory (their entries), deepest first."""
    dirs = []
    for dirpath, _, files in os.walk(root):
        dirs.append(dirpath)
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        fsync_dir(Path(d))


def local_tree(path: Path) -> Tuple[int, int, float]:
    """(files, bytes, newest modification time) of everything under a local folder, links not followed."""
    files, size, newest = 0, 0, path.lstat().st_mtime
    for dirpath, dirnames, names in os.walk(path):
        for n in (*dirnames, *names):
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            newest = max(newest, st.st_mtime)
            if n in names:
                files += 1
                size += st.st_size
    return files, size, newest


@dataclass
class Artifact:
    """A committed artifact: its local directory and its manifest."""

    stage: str
    fingerprint: str
    dir: Path
    manifest: Dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Absolute path of the named artifact entry (see ``manifest['artifacts']``).

        Raises:
            KeyError: the artifact has no entry ``name`` (the message lists those it has).
        """
        try:
            rel = self.manifest["artifacts"][name]
        except KeyError as e:
            have = ", ".join(self.manifest.get("artifacts", {})) or "none"
            raise KeyError(f"{self.stage} artifact {self.fingerprint} has no '{name}' (has: {have})") from e
        return self.dir / rel

    @property
    def metrics(self) -> Dict[str, Any]:
        """The stage's metrics as committed (empty when it recorded none)."""
        return self.manifest.get("metrics", {})


@dataclass(frozen=True)
class Garbage:
    """One thing housekeeping found that no committed artifact refers to.

    ``where`` is what a person can look at (a folder, or an object-store prefix or key), ``nbytes`` what
    removing it frees, ``why`` the reason in a few words. ``targets`` is what the store removes (its own
    keys or paths; opaque to callers).
    """

    stage: str
    fingerprint: str
    where: str
    nbytes: int
    why: str
    targets: Sequence[str] = ()


class Builder(Protocol):
    """The write side of one artifact under construction (yielded by :meth:`Store.build`)."""

    stage: str
    fingerprint: str
    #: the local folder the stage writes into (absolute paths in it stay valid once committed)
    dir: Path
    started: float

    def commit(self, manifest: Dict[str, Any]) -> Artifact:
        """Make the artifact complete: every file first, the manifest last and atomically.

        Returns the committed artifact (on a shared store, possibly another build's that committed first).

        Raises:
            StoreError: a declared artifact entry does not exist, or the store refused the commit.
        """
        ...


@runtime_checkable
class Store(Protocol):
    """An artifact store: ``<store>/<stage>/<fingerprint>/`` with its manifest written last.

    Implementations: :class:`cvops.store.folder.FolderStore` (a folder, shared by the machines that mount
    it) and :class:`cvops.store.s3.ObjectStore` (``s3://bucket/prefix``, read through a local cache).
    :func:`cvops.store.open_store` picks one from the recipe's ``paths``.
    """

    #: this machine's side of the store: the store itself (a folder), or its local cache (a bucket). Stages
    #: that keep machine-local files beside the store (request logs) keep them under it.
    root: Path
    #: the store's URL (``s3://...``), or None for a folder store
    url: Optional[str]

    @property
    def id(self) -> str:
        """The store's identity, written once (survives moves, mounts and other machines)."""
        ...

    def spec(self) -> Dict[str, Any]:
        """What :func:`cvops.store.open_store` needs to open this store again in another process (plain data)."""
        ...

    def dir(self, stage: str, fingerprint: str) -> Path:
        """The local directory of ``stage/fingerprint`` (complete or not)."""
        ...

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        """True when ``stage/fingerprint`` is committed (its manifest exists)."""
        ...

    def manifest(self, stage: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The committed manifest of ``stage/fingerprint`` (no file is fetched), or None.

        Raises:
            StoreError: the manifest is damaged (named, with the fix).
        """
        ...

    def get(self, stage: str, fingerprint: str) -> Optional[Artifact]:
        """The committed artifact, on local disk (fetched and verified as needed), or None."""
        ...

    def fingerprints(self, stage: str) -> List[str]:
        """The fingerprints under ``stage`` that name a folder (committed or not), sorted."""
        ...

    def artifacts(self, stage: str, prefix: str = "") -> Iterator[Artifact]:
        """The committed artifacts of ``stage`` whose fingerprint starts with ``prefix``, by fingerprint."""
        ...

    def check_writable(self) -> None:
        """Fail early, naming the store and the fix, if it cannot be written.

        Raises:
            StoreError: the store (or its local cache) is not writable.
        """
        ...

    def build(self, stage: str, fingerprint: str, *, timeout: float = 3600.0, keep_partial: bool = False,
              on_wait: Optional[Callable[[Path], None]] = None) -> AbstractContextManager[Optional[Builder]]:
        """Hold ``stage/fingerprint`` for one builder and yield its :class:`Builder`.

        Yields None when the artifact is (or became, while waiting) committed by another run. An unfinished
        build left by a killed run is wiped first unless ``keep_partial`` (a stage that resumes from it).
        The hold is released on exit, whatever happens.

        Raises:
            StoreError: waited ``timeout`` seconds for another live builder.
        """
        ...

    def publish(self, stage: str, fingerprint: str, path: Path, rel: str) -> None:
        """Put one file of a build in progress where the build's other machines find it (:meth:`pending`)."""
        ...

    def pending(self, stage: str, fingerprint: str, rel: str, dst: Path) -> bool:
        """Fetch a file :meth:`publish` put there to ``dst``; False while it is not there."""
        ...

    def garbage(self, stages: Sequence[str], grace_s: float, keep: Callable[[str, str], bool]) -> List[Garbage]:
        """What no committed artifact holds under ``stages``: unfinished builds nobody is building, a losing
        concurrent build's copies. Nothing touched in the last ``grace_s`` seconds, nothing a live builder
        holds, and no ``stage/fingerprint`` for which ``keep`` is true is listed."""
        ...

    def remove(self, item: Garbage) -> int:
        """Remove what :meth:`garbage` listed, if it still is garbage; returns the bytes freed."""
        ...


__all__ = ["MANIFEST", "FINGERPRINT", "Artifact", "Builder", "Store", "Garbage", "StoreError", "write_json_atomic",
           "sync_tree", "fsync_dir", "local_tree"]
