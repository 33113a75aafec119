"""The artifact store in a folder (``paths.store: <dir>``): local disk, or a file system every machine mounts.

Layout: ``<store>/<stage>/<fingerprint>/`` holds what a stage produced and,
written last and atomically, ``manifest.json``. A directory without a manifest
is an unfinished build (a killed run) and is never reused: the next build of
the same fingerprint wipes it first. ``<store>/<stage>/<fingerprint>.lock``
(an OS file lock, released if the holder dies) makes concurrent runs that need
the same artifact build it once and share it; housekeeping takes the same lock
before it removes an unfinished build, so it never removes one being built.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from cvops.store.base import (FINGERPRINT, MANIFEST, Artifact, Garbage, StoreError, fsync_dir, local_tree,
                              sync_tree, write_json_atomic)

#: Why an unfinished build is left behind (said once, in the housekeeping listing).
UNFINISHED = ("unfinished build (no manifest: a killed run, a failed gate, or code that changed while it ran)")


class FolderStore:
    """The store rooted at a folder (``paths.store``); see the module docstring for the layout.

    Args:
        root: The store's folder (``~`` is expanded; it is created on the first write).
    """

    url: Optional[str] = None  # a folder store has no URL: it is its own machine-local side

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"FolderStore({str(self.root)!r})"

    @property
    def id(self) -> str:
        """This store's identity: a random id written once in ``<store>/store-id`` (survives moves and mounts).

        ``<store>/store-home`` records the folder the id belongs to. A store found elsewhere was moved (its
        old folder is gone or holds another store: the id follows it) or copied (``cp -a``: the old folder
        still holds the same id); a copy is refused, since it would write into the original's FiftyOne
        datasets, until :meth:`new_id` gives it its own (``cvops store new-id``).

        Raises:
            StoreError: this folder is a copy of a store that still lives at the recorded folder.
        """
        cached = self.__dict__.get("_id")
        if cached is None:
            cached = self._read_or_make_id()
            self._check_home(cached)
            self.__dict__["_id"] = cached
        return cached

    def _read_or_make_id(self) -> str:
        path = self.root / "store-id"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".store-id.{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's id
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text(encoding="utf-8").strip()

    def _check_home(self, ident: str) -> None:
        home = self.root / "store-home"
        try:
            recorded = home.read_text(encoding="utf-8").strip()
        except OSError:
            recorded = ""
        if recorded == str(self.root):
            return
        if recorded:
            other = Path(recorded) / "store-id"
            try:
                theirs = other.read_text(encoding="utf-8").strip()
                same_file = os.path.samefile(other, self.root / "store-id")  # one store seen through two paths
            except OSError:
                theirs, same_file = "", False
            if theirs == ident and not same_file:
                raise StoreError(
                    f"store {self.root} has the id of the store at {recorded} ({ident}): it is a copy (cp -a "
                    "keeps the id), and runs on it would write into the original's FiftyOne datasets. Give the "
                    f"copy its own id: cvops store new-id paths.store={self.root} (or point paths.store at "
                    f"{recorded})")
        if not os.access(self.root, os.W_OK):  # a read-only store: nothing to record, nothing written through it
            return
        tmp = self.root / f".store-home.{uuid.uuid4().hex}"  # first use here, or the store moved: the id lives here
        tmp.write_text(str(self.root) + "\n", encoding="utf-8")
        os.replace(tmp, home)

    def new_id(self) -> str:
        """Give this folder a new store id bound to it (a copied store's own identity); returns the new id."""
        self.root.mkdir(parents=True, exist_ok=True)
        ident = uuid.uuid4().hex
        for name, text in (("store-id", ident), ("store-home", str(self.root))):
            tmp = self.root / f".{name}.{uuid.uuid4().hex}"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.root / name)
        self.__dict__["_id"] = ident
        return ident

    def spec(self) -> Dict[str, Any]:
        """``{"store": <folder>}``: what :func:`cvops.store.open_store` opens again in another process."""
        return {"store": str(self.root)}

    def dir(self, stage: str, fingerprint: str) -> Path:
        """The directory of ``stage/fingerprint`` (complete or not)."""
        return self.root / stage / fingerprint

    # ----------------------------------------------------------- a build's files for its other machines
    def publish(self, stage: str, fingerprint: str, path: Path, rel: str) -> None:
        """A folder store is seen by every machine of a build as it is: nothing to publish."""

    def pending(self, stage: str, fingerprint: str, rel: str, dst: Path) -> bool:
        """True when the build in progress has ``rel`` (a folder store: it is already at ``dst``)."""
        return (self.dir(stage, fingerprint) / rel).is_file()

    # ----------------------------------------------------------- read
    def is_complete(self, stage: str, fingerprint: str) -> bool:
        """True when ``stage/fingerprint`` has its manifest."""
        return (self.dir(stage, fingerprint) / MANIFEST).is_file()

    def manifest(self, stage: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The committed manifest of ``stage/fingerprint``, or None.

        Raises:
            StoreError: the manifest is not JSON (the message names it and the fix).
        """
        path = self.dir(stage, fingerprint) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:  # cannot happen with atomic writes; say so if it does
            raise StoreError(f"corrupt manifest {path}: {e}; delete {path.parent} to rebuild it") from e

    def get(self, stage: str, fingerprint: str) -> Optional[Artifact]:
        """The complete artifact, or None."""
        manifest = self.manifest(stage, fingerprint)
        return None if manifest is None else Artifact(stage, fingerprint, self.dir(stage, fingerprint), manifest)

    def fingerprints(self, stage: str) -> List[str]:
        """Every fingerprint folder under ``stage`` (committed or not), sorted."""
        try:
            entries = list((self.root / stage).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(p.name for p in entries if FINGERPRINT.fullmatch(p.name) and p.is_dir() and not p.is_symlink())

    def artifacts(self, stage: str, prefix: str = "") -> Iterator[Artifact]:
        """The committed artifacts of ``stage`` whose fingerprint starts with ``prefix``."""
        for fp in self.fingerprints(stage):
            art = self.get(stage, fp) if fp.startswith(prefix) else None
            if art is not None:
                yield art

    # ----------------------------------------------------------- write
    def check_writable(self) -> None:
        """Fail early, with the fix, if the store cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as e:
            raise StoreError(
                f"artifact store {self.root} is not writable ({e.strerror or e}); "
                "set paths.store=<dir> on the command line or CVOPS_STORE=<dir>"
            ) from e

    @contextmanager
    def build(
        self,
        stage: str,
        fingerprint: str,
        *,
        timeout: float = 3600.0,
        keep_partial: bool = False,
        on_wait: Optional[Callable[[Path], None]] = None,
    ) -> Iterator[Optional["FolderBuilder"]]:
        """Lock ``stage/fingerprint`` and yield a :class:`FolderBuilder`.

        Yields None when the artifact is (or became, while waiting for the lock)
        complete: another run built it. An unfinished directory left by a killed
        run is wiped unless ``keep_partial`` (a stage that resumes from it).
        The lock is released on exit, whatever happens; the manifest exists
        only if :meth:`FolderBuilder.commit` ran.
        """
        from filelock import FileLock, Timeout

        d = self.dir(stage, fingerprint)
        d.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(d) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(d)
            try:
                lock.acquire(timeout=timeout)
            except Timeout as e:
                raise StoreError(
                    f"waited {timeout:.0f}s for another run building {d}; if no run is alive, "
                    f"delete {d}.lock (or raise lock_timeout_s)"
                ) from e
        try:
            if self.is_complete(stage, fingerprint):
                yield None
                return
            if d.exists() and not keep_partial:
                shutil.rmtree(d)
            d.mkdir(parents=True, exist_ok=True)
            yield FolderBuilder(stage, fingerprint, d)
        finally:
            lock.release()

    # ----------------------------------------------------------- housekeeping
    def garbage(self, stages: Sequence[str], grace_s: float, keep: Callable[[str, str], bool]) -> List[Garbage]:
        """Unfinished builds under ``stages`` that no run is building, untouched for ``grace_s`` seconds and
        not held by ``keep`` (see :meth:`cvops.store.base.Store.garbage`)."""
        now = time.time()
        out: List[Garbage] = []
        for stage in stages:
            for fp in self.fingerprints(stage):
                d = self.dir(stage, fp)
                if (d / MANIFEST).is_file() or keep(stage, fp):
                    continue
                files, size, newest = local_tree(d)
                if now - newest < grace_s or self._building(d):
                    continue
                out.append(Garbage(stage, fp, str(d), size, f"{UNFINISHED}, {files} files", (str(d),)))
        return out

    @staticmethod
    def _building(d: Path) -> bool:
        """True while a run holds ``d``'s build lock (a lock file nobody holds, or none, is no build)."""
        from filelock import FileLock, Timeout

        if not Path(str(d) + ".lock").exists():
            return False
        lock = FileLock(str(d) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def remove(self, item: Garbage) -> int:
        """Remove an unfinished build :meth:`garbage` listed, under its build lock (so no run is building it),
        unless it was committed since; returns the bytes freed (0: left alone)."""
        from filelock import FileLock, Timeout

        freed = 0
        for target in item.targets:
            d = Path(target)
            if d.parent.parent != self.root or not FINGERPRINT.fullmatch(d.name):
                raise StoreError(f"{d} is not an artifact folder of the store {self.root}: not removed")
            lock = FileLock(str(d) + ".lock")  # the lock file stays: unlinking one a waiter holds splits the lock
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a run started building it since it was listed
            try:
                if not d.is_dir() or (d / MANIFEST).is_file():
                    continue
                size = local_tree(d)[1]
                shutil.rmtree(d)
                freed += size
            finally:
                lock.release()
        return freed


@dataclass
class FolderBuilder:
    """Write side of one artifact under construction in a :class:`FolderStore`."""

    stage: str
    fingerprint: str
    dir: Path
    started: float = field(default_factory=time.time)

    def commit(self, manifest: Dict[str, Any]) -> Artifact:
        """Write the manifest last and atomically: the artifact is now complete.

        Raises:
            StoreError: an entry of ``manifest['artifacts']`` does not exist in the build folder.
        """
        for name, rel in manifest.get("artifacts", {}).items():
            if not (self.dir / rel).exists():
                raise StoreError(f"{self.stage} declared artifact '{name}' -> {self.dir / rel}, which does not exist")
        sync_tree(self.dir)  # every file on disk before the manifest makes them visible
        write_json_atomic(self.dir / MANIFEST, manifest)
        fsync_dir(self.dir)
        return Artifact(self.stage, self.fingerprint, self.dir, manifest)


__all__ = ["FolderStore", "FolderBuilder"]
