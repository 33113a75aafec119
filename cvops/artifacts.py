"""Content-addressed artifact store.

Layout: ``<store>/<stage>/<fingerprint>/`` holds what a stage produced and,
written last and atomically, ``manifest.json``. A directory without a manifest
is an unfinished build (a killed run) and is never reused: the next build of
the same fingerprint wipes it first. ``<store>/<stage>/<fingerprint>.lock``
(an OS file lock, released if the holder dies) makes concurrent runs that need
the same artifact build it once and share it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

MANIFEST = "manifest.json"


class StoreError(OSError):
    """The store cannot be used (not writable, or a lock timed out)."""


def write_json_atomic(path: Path, data: Any, durable: bool = True) -> None:
    """Write JSON so that readers see the old file or the whole new one (``durable``: on disk before the
    rename, so a power cut leaves the old file or the new one, never an empty one)."""
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform without directory handles
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
        _fsync_dir(Path(d))


@dataclass
class Artifact:
    """A complete artifact: its directory and its manifest."""

    stage: str
    fingerprint: str
    dir: Path
    manifest: Dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Absolute path of the named artifact entry (see ``manifest['artifacts']``)."""
        try:
            rel = self.manifest["artifacts"][name]
        except KeyError as e:
            have = ", ".join(self.manifest.get("artifacts", {})) or "none"
            raise KeyError(f"{self.stage} artifact {self.fingerprint} has no '{name}' (has: {have})") from e
        return self.dir / rel

    @property
    def metrics(self) -> Dict[str, Any]:
        return self.manifest.get("metrics", {})


class ArtifactStore:
    """The store rooted at ``paths.store``."""

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def __str__(self) -> str:
        return str(self.root)

    @property
    def id(self) -> str:
        """This store's identity: a random id written once in ``<store>/store-id`` (survives moves and mounts)."""
        path = self.root / "store-id"
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        import uuid

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

    def dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint

    def publish(self, stage: str, fingerprint: str, path: Path, rel: str) -> None:
        """A folder store is seen by every machine of a build as it is: nothing to publish."""

    def pending(self, stage: str, fingerprint: str, rel: str, dst: Path) -> bool:
        """True when the build in progress has ``rel`` (a folder store: it is already at ``dst``)."""
        return (self.dir(stage, fingerprint) / rel).is_file()

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        return (self.dir(stage, fingerprint) / MANIFEST).is_file()

    def get(self, stage: str, fingerprint: str) -> Optional[Artifact]:
        """The complete artifact, or None."""
        d = self.dir(stage, fingerprint)
        try:
            manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:  # cannot happen with atomic writes; say so if it does
            raise StoreError(f"corrupt manifest {d / MANIFEST}: {e}; delete {d} to rebuild it") from e
        return Artifact(stage, fingerprint, d, manifest)

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
    ) -> Iterator[Optional["Builder"]]:
        """Lock ``stage/fingerprint`` and yield a :class:`Builder`.

        Yields None when the artifact is (or became, while waiting for the lock)
        complete: another run built it. An unfinished directory left by a killed
        run is wiped unless ``keep_partial`` (a stage that resumes from it).
        The lock is released on exit, whatever happens; the manifest exists
        only if :meth:`Builder.commit` ran.
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
            yield Builder(stage, fingerprint, d)
        finally:
            lock.release()


def open_store(paths: Any) -> Any:
    """The store ``paths`` (the recipe's ``paths`` section, or a store path/URL) names: an
    :class:`ArtifactStore` for a folder, a :class:`cvops.objectstore.ObjectStore` for ``s3://...``."""
    from cvops.remote import is_url

    if isinstance(paths, (str, os.PathLike)):
        store, options, cache, lease_s = str(paths), {}, None, 30.0
    elif isinstance(paths, dict):  # a store_spec()
        store, options = str(paths["store"]), dict(paths.get("store_options") or {})
        cache, lease_s = paths.get("cache"), paths.get("lease_s")
    else:
        store = str(paths.store)
        options = dict(paths.get("store_options") or {})
        cache, lease_s = paths.get("cache"), paths.get("lease_s")
    if not is_url(store):
        return ArtifactStore(store)
    lease_s = 30.0 if lease_s is None else float(lease_s)
    protocol = store.split("://", 1)[0].lower()
    if protocol not in ("s3", "s3a"):
        raise StoreError(f"paths.store={store}: an object store must be s3:// (S3 or an S3-compatible server such "
                         "as MinIO): its commits and build leases need S3's conditional writes; other URLs can "
                         "be data (data.path), not the store")
    if not 1.0 <= lease_s <= 86400.0:
        raise StoreError(f"paths.lease_s={lease_s}: give 1 to 86400 seconds (a build lease is renewed every "
                         "lease_s/3 s and taken over after lease_s s without renewal; default 30)")
    from cvops.objectstore import ObjectStore

    cache = cache or os.environ.get("CVOPS_CACHE_DIR") or "~/.cache/cvops"
    return ObjectStore(store, options, cache, lease_s)


def store_spec(store: Any) -> Dict[str, Any]:
    """What :func:`open_store` needs to open ``store`` again in another process (plain data, picklable)."""
    if getattr(store, "url", None):
        return {"store": store.url, "store_options": dict(store.options), "cache": str(store.cache),
                "lease_s": store.lease_s}
    return {"store": str(store.root)}


@dataclass
class Builder:
    """Write side of one artifact under construction."""

    stage: str
    fingerprint: str
    dir: Path
    started: float = field(default_factory=time.time)

    def commit(self, manifest: Dict[str, Any]) -> Artifact:
        """Write the manifest last and atomically: the artifact is now complete."""
        for name, rel in manifest.get("artifacts", {}).items():
            if not (self.dir / rel).exists():
                raise StoreError(f"{self.stage} declared artifact '{name}' -> {self.dir / rel}, which does not exist")
        sync_tree(self.dir)  # every file on disk before the manifest makes them visible
        write_json_atomic(self.dir / MANIFEST, manifest)
        _fsync_dir(self.dir)
        return Artifact(self.stage, self.fingerprint, self.dir, manifest)
