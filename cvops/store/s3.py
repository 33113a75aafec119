"""The artifact store on object storage: ``paths.store: s3://bucket/prefix``.

Same layout, fingerprints and protocol (:class:`cvops.store.base.Store`) as the folder store
(:mod:`cvops.store.folder`): ``<store>/<stage>/<fingerprint>/`` with its ``manifest.json``. What
differs is how "written last and atomically" and "one builder" are made true between machines that
share nothing but the bucket:

- **Commit** is the manifest written with ``If-None-Match: *``. Two machines that built the same
  fingerprint both upload their files, each under its own build id (``<fp>/<build>/...``, so neither
  overwrites the other's bytes); only one manifest write succeeds, and the manifest names the build
  whose files it lists. The loser uses the winner's artifact. A build that dies before the manifest
  leaves no committed artifact. What either leaves in the bucket (the loser's uploads, a killed build's
  objects) is removed by :func:`cvops.store.housekeeping.gc` (``cvops store gc``).
- **The build lock is a lease**, ``<stage>/<fingerprint>.lease``: created with ``If-None-Match: *``,
  renewed every ``lease_s / 3`` seconds with ``If-Match`` on its ETag (each renewal changes the
  ETag). A waiter that sees the same ETag for ``lease_s`` seconds by its own clock (no clock is
  compared between machines) takes the lease over with ``If-Match``, so a dead holder's lease expires
  and two waiters cannot both take it.
- **Each machine reads through a local cache**, ``<paths.cache>/store/<bucket>/<prefix>/``, laid out like
  a local store: an artifact is downloaded once, every file checked against the size and sha256 in the
  manifest, and rechecked (rehashed) only when its size or time changed since. A corrupt or partial
  cached file is downloaded again. Stages always work on local files.

Credentials and the endpoint: the standard AWS variables (``AWS_ENDPOINT_URL`` for an S3-compatible
server) or ``paths.store_options`` (passed to s3fs as they are); see :mod:`cvops.remote`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from cvops import remote
from cvops.store.base import FINGERPRINT, MANIFEST, Artifact, Garbage, StoreError, local_tree, write_json_atomic

log = logging.getLogger("cvops")
VERIFIED = ".verified.json"  # cache side: {rel: [size, mtime_ns]} of files whose hash matched the manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listing(root: Path) -> List[str]:
    """Every file under ``root`` (links followed: an artifact holds bytes, not links), relative, sorted."""
    out: List[str] = []
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        dirnames.sort()
        for n in sorted(names):
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel not in (MANIFEST, VERIFIED) and p.is_file():
                out.append(rel)
    return out


def _local_manifest(d: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


#: How :meth:`ObjectStore.garbage` marks a folder of this machine's cache among the bucket keys it lists.
LOCAL = "local:"


def _modified(info: Mapping[str, Any]) -> float:
    """An object's last-modified time in epoch seconds (now when the listing does not say: never old enough
    to be removed)."""
    t = info.get("LastModified", info.get("mtime"))
    if hasattr(t, "timestamp"):
        return float(t.timestamp())
    if isinstance(t, (int, float)):
        return float(t)
    return time.time()


def _local_unfinished(stage_dir: Path) -> List[str]:
    """Fingerprint folders of a cache's stage folder that have no manifest."""
    try:
        entries = sorted(stage_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p.name for p in entries if FINGERPRINT.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
            and not (p / MANIFEST).exists()]


class ObjectStore:
    """The store at ``url`` (``s3://bucket/prefix``), read through a local cache at ``cache``.

    Implements :class:`cvops.store.base.Store`: ``root`` is the local cache of this store (stages that keep
    machine-local files beside the store, such as request logs, keep them there), ``url`` the store itself.

    Args:
        url: ``s3://bucket/prefix`` (``s3a://`` too).
        options: Passed to s3fs as they are (``paths.store_options``: endpoint, credentials, ...).
        cache: This machine's cache folder; the store's copy is ``<cache>/store/<bucket>/<prefix>/``.
        lease_s: A build lease is renewed every ``lease_s / 3`` seconds and taken over after ``lease_s``
            seconds without renewal.
    """

    def __init__(self, url: str, options: Optional[Mapping[str, Any]] = None,
                 cache: os.PathLike | str = "~/.cache/cvops", lease_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self.fs, self.key = remote.filesystem(self.url, self.options)
        safe = re.sub(r"[^A-Za-z0-9._/-]+", "_", self.key).strip("/")
        self.cache = Path(cache).expanduser().resolve()
        self.root = self.cache / "store" / safe
        self.lease_s = float(lease_s)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r}, cache={str(self.root)!r})"

    def __str__(self) -> str:
        return self.url

    def spec(self) -> Dict[str, Any]:
        """What :func:`cvops.store.open_store` needs to open this store again in another process."""
        return {"store": self.url, "store_options": dict(self.options), "cache": str(self.cache),
                "lease_s": self.lease_s}

    # ----------------------------------------------------------- keys
    def _key(self, *parts: str) -> str:
        return "/".join([self.key, *parts])

    def dir(self, stage: str, fingerprint: str) -> Path:
        """The local (cached) directory of an artifact."""
        return self.root / stage / fingerprint

    @property
    def id(self) -> str:
        """This store's identity: a random id written once in ``<store>/store-id`` (first writer wins)."""
        key = self._key("store-id")
        try:
            return self.fs.cat_file(key).decode().strip()
        except FileNotFoundError:
            pass
        try:
            self.fs.pipe_file(key, (uuid.uuid4().hex + "\n").encode(), mode="create")
        except Exception as e:
            if not remote.precondition_failed(e):
                raise
        return self.fs.cat_file(key).decode().strip()

    def check_writable(self) -> None:
        """Fail early, with the fix, if the bucket cannot be written or the cache cannot be."""
        key = self._key(f".write-test-{uuid.uuid4().hex}")
        try:
            self.fs.pipe_file(key, b"")
            self.fs.rm_file(key)
        except Exception as e:
            raise StoreError(
                f"artifact store {self.url} is not writable ({type(e).__name__}: {e}); check the bucket, "
                "AWS_ENDPOINT_URL and the AWS credentials (or paths.store_options)") from e
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"the local cache {self.root} of store {self.url} is not writable "
                             f"({e.strerror or e}); set paths.cache=<dir> or CVOPS_CACHE_DIR") from e

    # ----------------------------------------------------------- read
    def _remote_manifest(self, stage: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        try:
            raw = self.fs.cat_file(self._key(stage, fingerprint, MANIFEST))
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:  # a manifest is one PUT: whole or absent
            raise StoreError(f"corrupt manifest {self.url}/{stage}/{fingerprint}/{MANIFEST}: {e}") from e

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        """True when ``stage/fingerprint`` has its manifest in the bucket."""
        return self.fs.exists(self._key(stage, fingerprint, MANIFEST))

    def manifest(self, stage: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The committed manifest of ``stage/fingerprint`` as the bucket has it (nothing is fetched), or None.

        Raises:
            StoreError: the manifest is not JSON or not a valid cvops manifest (named, with the fix).
        """
        manifest = self._remote_manifest(stage, fingerprint)
        if manifest is not None:
            self._check(manifest, stage, fingerprint)
        return manifest

    def fingerprints(self, stage: str) -> List[str]:
        """Every fingerprint under ``stage`` in the bucket (committed or not), sorted."""
        try:
            names = self.fs.ls(self._key(stage), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({n for n in (p.rsplit("/", 1)[-1] for p in names) if FINGERPRINT.fullmatch(n)})

    def artifacts(self, stage: str, prefix: str = "") -> Iterator[Artifact]:
        """The committed artifacts of ``stage`` whose fingerprint starts with ``prefix`` (only those are fetched)."""
        for fp in self.fingerprints(stage):
            art = self.get(stage, fp) if fp.startswith(prefix) else None
            if art is not None:
                yield art

    def get(self, stage: str, fingerprint: str) -> Optional[Artifact]:
        """The complete artifact, in the local cache (downloaded and verified as needed), or None."""
        manifest = self._remote_manifest(stage, fingerprint)
        if manifest is None:
            return None
        self._check(manifest, stage, fingerprint)
        d = self.dir(stage, fingerprint)
        self._materialise(manifest, d)
        return Artifact(stage, fingerprint, d, manifest)

    def _check(self, manifest: Any, stage: str, fingerprint: str) -> None:
        """A manifest is read from a bucket others can write: refuse one that would make this machine write
        or read outside the artifact's cache folder, or fetch another artifact's files."""
        where = f"{self.url}/{stage}/{fingerprint}/{MANIFEST}"

        def bad(why: str) -> StoreError:
            return StoreError(f"{where} is not a valid cvops manifest ({why}); delete it to rebuild the artifact")

        if not isinstance(manifest, dict):
            raise bad("not a JSON object")
        if manifest.get("stage") != stage or manifest.get("fingerprint") != fingerprint:
            raise bad(f"it names {manifest.get('stage')!r}/{manifest.get('fingerprint')!r}")
        if not isinstance(manifest.get("build"), str) or not re.fullmatch(r"[0-9a-f]{12}", manifest["build"]):
            raise bad("no 'build' id: it was not written by this cvops version's object store"
                      if "build" not in manifest else f"build id {str(manifest['build'])[:40]!r}")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise bad("'files' is not a mapping")
        for rel, want in files.items():
            if not remote.safe_rel(rel) or rel in (MANIFEST, VERIFIED):
                raise bad(f"file path {str(rel)[:80]!r} leaves the artifact's folder")
            if not (isinstance(want, dict) and isinstance(want.get("size"), int) and want["size"] >= 0
                    and isinstance(want.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", want["sha256"])):
                raise bad(f"{rel}: size and sha256 missing or malformed")
        arts = manifest.get("artifacts", {})
        if not isinstance(arts, dict) or not all(remote.safe_rel(str(v).rstrip("/")) for v in arts.values()):
            raise bad("an 'artifacts' entry points outside the artifact's folder")

    def _materialise(self, manifest: Dict[str, Any], d: Path) -> None:
        files: Dict[str, Dict[str, Any]] = manifest["files"]
        build = manifest["build"]
        try:
            verified = json.loads((d / VERIFIED).read_text())
        except (OSError, ValueError):
            verified = {}
        if _local_manifest(d) != manifest:
            verified = {}  # not cached yet, a killed build's leftovers, or a rebuilt artifact: check every file
        stale: List[str] = []
        for rel, want in files.items():
            p = d / rel
            try:
                st = p.stat()
            except OSError:
                stale.append(rel)
                continue
            if verified.get(rel) == [st.st_size, st.st_mtime_ns]:
                continue
            if st.st_size != want["size"] or _sha256(p) != want["sha256"]:
                stale.append(rel)
            else:
                verified[rel] = [st.st_size, st.st_mtime_ns]
        if stale:
            t0 = time.perf_counter()
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".download-{uuid.uuid4().hex[:8]}"
            srcs = [self._key(manifest["stage"], manifest["fingerprint"], build, rel) for rel in stale]
            dsts = [str(tmp / rel) for rel in stale]
            for p in dsts:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            try:
                hashes = self._download(srcs, dsts)
                for rel, sha in zip(stale, hashes):
                    got = tmp / rel
                    want = files[rel]
                    if got.stat().st_size != want["size"] or sha != want["sha256"]:
                        raise StoreError(f"{self.url}/{manifest['stage']}/{manifest['fingerprint']}/{build}/{rel} "
                                         "does not match its manifest (size or sha256): the stored artifact is "
                                         "damaged; delete its manifest.json to rebuild it")
                    (d / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(got, d / rel)
                    st = (d / rel).stat()
                    verified[rel] = [st.st_size, st.st_mtime_ns]
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            size = sum(files[r]["size"] for r in stale)
            log.info("  %-9s fetched  %d files, %.1f MB from %s (%.1fs)", manifest["stage"], len(stale), size / 1e6,
                     self.url, time.perf_counter() - t0)
        write_json_atomic(d / VERIFIED, verified, durable=False)
        if _local_manifest(d) != manifest:
            write_json_atomic(d / MANIFEST, manifest, durable=False)  # last: the cached copy is whole

    def _download(self, keys: List[str], dsts: List[str]) -> List[str]:
        """Download ``keys`` to ``dsts`` concurrently, hashing each file as its bytes arrive (the check costs no
        second pass over the data); returns the sha256 of each. Filesystems other than s3fs: download, then hash."""
        if not hasattr(self.fs, "_call_s3"):
            self.fs.get(keys, dsts)
            return [_sha256(Path(p)) for p in dsts]
        import asyncio

        from fsspec.asyn import sync

        fs = self.fs

        async def one(key: str, dst: str, gate: "asyncio.Semaphore") -> str:
            bucket, k, _ = fs.split_path(key)
            async with gate:
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=k)
                body = resp["Body"]
                h = hashlib.sha256()
                pending = None
                try:
                    with open(dst, "wb") as f:
                        def take(chunk: bytes) -> None:
                            h.update(chunk)  # both release the GIL: hashing and writing overlap the next read
                            f.write(chunk)

                        while True:
                            chunk = await body.read(1 << 20)
                            if pending is not None:
                                await pending
                            if not chunk:
                                break
                            pending = asyncio.ensure_future(asyncio.to_thread(take, chunk))
                finally:
                    body.close()
                return h.hexdigest()

        async def all_() -> List[str]:
            gate = asyncio.Semaphore(32)
            return list(await asyncio.gather(*(one(k, d, gate) for k, d in zip(keys, dsts))))

        return sync(fs.loop, all_)

    # ----------------------------------------------------------- a build's files for its other machines
    def publish(self, stage: str, fingerprint: str, path: Path, rel: str) -> None:
        """Put one file of a build in progress where the build's other machines find it (a multi-node
        training's config for ``cvops train-worker``): ``<stage>/<fingerprint>.pending/<rel>``."""
        self.fs.put_file(str(path), self._key(stage, f"{fingerprint}.pending", rel))

    def pending(self, stage: str, fingerprint: str, rel: str, dst: Path) -> bool:
        """Download a file :meth:`publish` put there to ``dst``; False while it is not there."""
        try:
            data = self.fs.cat_file(self._key(stage, f"{fingerprint}.pending", rel))
        except FileNotFoundError:
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, dst)
        return True

    # ----------------------------------------------------------- lease
    def _lease_body(self, holder: str, n: int) -> bytes:
        return json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "renewal": n,
                           "lease_s": self.lease_s, "written": time.time()}).encode()

    def _etag(self, key: str) -> Optional[str]:
        try:
            return self.fs.info(key, refresh=True).get("ETag")
        except FileNotFoundError:
            return None

    def _acquire(self, key: str, holder: str, timeout: float, on_wait: Callable[[], None],
                 done: Callable[[], bool]) -> Optional["_Lease"]:
        """The lease (None: the artifact was completed meanwhile)."""
        start = time.monotonic()
        seen: Tuple[Optional[str], float] = (None, start)
        waited = False
        while True:
            try:
                out = self.fs.pipe_file(key, self._lease_body(holder, 0), mode="create")
                return _Lease(self, key, holder, out.get("ETag"))
            except Exception as e:
                if not remote.precondition_failed(e):
                    raise StoreError(f"cannot take the build lease {self.url}/{key[len(self.key) + 1:]}: "
                                     f"{type(e).__name__}: {e}") from e
            if done():
                return None
            etag = self._etag(key)
            now = time.monotonic()
            if etag is None:
                continue  # released just now: try to create it again
            if etag != seen[0]:
                seen = (etag, now)  # alive (renewed) or new: the clock starts again
            elif now - seen[1] > self.lease_s:
                try:
                    out = self.fs.pipe_file(key, self._lease_body(holder, 0), IfMatch=etag)
                    log.info("  took over the build lease %s: its holder stopped renewing it %.0fs ago", key,
                             now - seen[1])
                    return _Lease(self, key, holder, out.get("ETag"))
                except Exception as e:
                    if not remote.precondition_failed(e):
                        raise
                    continue  # another waiter took it first
            if not waited:
                on_wait()
                waited = True
            if now - start > timeout:
                raise StoreError(f"waited {timeout:.0f}s for another run building {self.url}/{key[len(self.key) + 1:]}"
                                 " (its lease is being renewed); raise lock_timeout_s if it is a long build")
            time.sleep(min(1.0, self.lease_s / 6))

    @contextmanager
    def build(self, stage: str, fingerprint: str, *, timeout: float = 3600.0, keep_partial: bool = False,
              on_wait: Optional[Callable[[Path], None]] = None) -> Iterator[Optional["ObjectBuilder"]]:
        """Take the lease on ``stage/fingerprint`` and yield an :class:`ObjectBuilder` working in a local
        folder (None when the artifact is, or became while waiting, complete). The lease is renewed while
        the stage runs and released on exit, whatever happens."""
        holder = uuid.uuid4().hex[:12]
        # built where it will be cached (stages write absolute paths into their artifacts); nothing reads it from
        # here before the manifest exists in the bucket, and the lease keeps other runs of this cache out
        local = self.dir(stage, fingerprint)
        lease = self._acquire(self._key(stage, f"{fingerprint}.lease"), holder, timeout,
                              lambda: on_wait(local) if on_wait else None,
                              lambda: self.is_complete(stage, fingerprint))
        if lease is None:
            yield None
            return
        try:
            if self.is_complete(stage, fingerprint):
                yield None
                return
            if local.exists() and not keep_partial:
                shutil.rmtree(local)  # a killed build's leftovers, or a cached copy of a deleted artifact
            local.mkdir(parents=True, exist_ok=True)
            yield ObjectBuilder(stage, fingerprint, local, self, holder, lease)
        finally:
            lease.release()

    # ----------------------------------------------------------- housekeeping
    def _objects(self, stage: str) -> Dict[str, Tuple[int, float]]:
        """Every object under ``<store>/<stage>/``, fresh from the bucket: key relative to that prefix ->
        (size, last modified in epoch seconds)."""
        base = self._key(stage)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out: Dict[str, Tuple[int, float]] = {}
        for key, info in found.items():
            if info.get("type") != "directory" and key.startswith(base + "/"):
                out[key[len(base) + 1:]] = (int(info.get("size") or 0), _modified(info))
        return out

    def _lease_alive(self, stage: str, fingerprint: str, objects: Mapping[str, Tuple[int, float]], now: float,
                     grace_s: float) -> bool:
        """True while ``stage/fingerprint``'s build lease may have a live holder: renewed within its holder's
        ``lease_s`` (the lease says it; this store's own if longer) or within ``grace_s``."""
        seen = objects.get(f"{fingerprint}.lease")
        if seen is None:
            return False
        lease_s = self.lease_s
        try:
            body = json.loads(self.fs.cat_file(self._key(stage, f"{fingerprint}.lease")))
            lease_s = max(lease_s, float(body.get("lease_s", 0)))
        except FileNotFoundError:
            return False  # released since the listing
        except (ValueError, TypeError, AttributeError):
            pass  # not a cvops lease body: judged by this store's lease_s
        return now - seen[1] < max(grace_s, lease_s)

    def garbage(self, stages: Sequence[str], grace_s: float, keep: Callable[[str, str], bool]) -> List[Garbage]:
        """What no committed artifact holds under ``stages`` (see :meth:`cvops.store.base.Store.garbage`).

        In the bucket, per fingerprint: everything of one without a manifest (a killed build's uploads,
        its ``.pending`` files and dead lease), or, beside a committed manifest, whatever is not the build
        it names (a build that lost the commit, the finished build's ``.pending`` files). A fingerprint
        whose lease is alive, or with any such object written in the last ``grace_s`` seconds, is left
        alone whole. In this machine's cache: build folders without a manifest whose fingerprint is not
        committed in the bucket nor leased.
        """
        now = time.time()
        out: List[Garbage] = []
        for stage in stages:
            objects = self._objects(stage)
            groups: Dict[str, List[str]] = {}
            for rel in objects:
                head, _, rest = rel.partition("/")
                fp, _, kind = head.partition(".")
                ours = (kind, bool(rest)) in (("", True), ("lease", False), ("pending", True))
                if FINGERPRINT.fullmatch(fp) and ours:  # <fp>/..., <fp>.lease, <fp>.pending/...
                    groups.setdefault(fp, []).append(rel)
            for fp, rels in sorted(groups.items()):
                committed = f"{fp}/{MANIFEST}" in objects
                alive = self._lease_alive(stage, fp, objects, now, grace_s)
                if not committed and (alive or keep(stage, fp)):
                    continue
                if committed:
                    try:
                        manifest = self._remote_manifest(stage, fp)
                    except StoreError:
                        continue  # a damaged manifest is reported by whoever reads it; nothing here is guessed
                    if manifest is None:
                        continue  # deleted since the listing: the next gc sees it as it is then
                    ours = f"{fp}/{manifest.get('build')}/"
                    rels = [r for r in rels if r != f"{fp}/{MANIFEST}" and not r.startswith(ours)
                            and not (alive and r == f"{fp}.lease")]
                    why = (f"{len(rels)} objects beside the committed build {manifest.get('build')}: copies of a "
                           "build that lost the commit, or a finished build's pending files")
                else:
                    why = (f"unfinished build (no manifest: a killed run, a failed gate, or code that changed while "
                           f"it ran), {len(rels)} objects")
                if not rels or any(now - objects[r][1] < grace_s for r in rels):
                    continue
                out.append(Garbage(stage, fp, f"{self.url}/{stage}/{fp}", sum(objects[r][0] for r in rels), why,
                                   tuple(self._key(stage, r) for r in sorted(rels))))
            for fp in _local_unfinished(self.root / stage):
                committed = f"{fp}/{MANIFEST}" in objects
                if committed or self._lease_alive(stage, fp, objects, now, grace_s) or keep(stage, fp):
                    continue
                d = self.root / stage / fp
                files, size, newest = local_tree(d)
                if now - newest >= grace_s:
                    out.append(Garbage(stage, fp, str(d), size, f"unfinished build in this machine's cache, {files} "
                                       "files", (LOCAL + str(d),)))
        return out

    def remove(self, item: Garbage) -> int:
        """Remove what :meth:`garbage` listed, checked again first: nothing of a build whose lease is alive, never
        a manifest or the files of the build it names, a cached folder only while its fingerprint is not
        committed. Returns the bytes freed."""
        objects = self._objects(item.stage)
        if self._lease_alive(item.stage, item.fingerprint, objects, time.time(), 0.0):
            return 0  # a run took the lease since the listing
        manifest = self._remote_manifest(item.stage, item.fingerprint)
        base = self._key(item.stage)
        keys, freed = [], 0
        for target in item.targets:
            if target.startswith(LOCAL):
                d = Path(target[len(LOCAL):])
                if manifest is None and d.parent.parent == self.root and FINGERPRINT.fullmatch(d.name) \
                        and d.is_dir() and not (d / MANIFEST).exists():
                    freed += local_tree(d)[1]
                    shutil.rmtree(d)
                continue
            rel = target[len(base) + 1:] if target.startswith(base + "/") else None
            if rel is None or rel not in objects or rel.rsplit("/", 1)[-1] == MANIFEST:
                continue
            if manifest is not None and rel.startswith(f"{item.fingerprint}/{manifest.get('build')}/"):
                continue  # committed since the listing: the files it names stay
            keys.append(target)
            freed += objects[rel][0]
        if keys:
            self.fs.rm(keys)
            self.fs.invalidate_cache(base)
        return freed


class _Lease:
    """A held lease, renewed on a daemon thread until released."""

    def __init__(self, store: ObjectStore, key: str, holder: str, etag: Optional[str]) -> None:
        self.store, self.key, self.holder, self.etag = store, key, holder, etag
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="cvops-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        n = 0
        while not self._stop.wait(self.store.lease_s / 3):
            n += 1
            try:
                out = self.store.fs.pipe_file(self.key, self.store._lease_body(self.holder, n), IfMatch=self.etag)
                self.etag = out.get("ETag")
            except Exception as e:
                if remote.precondition_failed(e):
                    self.lost = True
                    log.warning("  lost the build lease %s (renewals came too late; another run took it over): "
                                "the commit is still safe, only one manifest write can win", self.key)
                    return
                log.warning("  could not renew the build lease %s: %s (will retry)", self.key, e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.lost:
            return
        try:
            if self.store._etag(self.key) == self.etag:
                self.store.fs.rm_file(self.key)
        except Exception as e:  # it will expire
            log.warning("  could not release the build lease %s: %s (it expires in %.0fs)", self.key, e,
                        self.store.lease_s)


@dataclass
class ObjectBuilder:
    """Write side of one artifact built locally and committed to object storage."""

    stage: str
    fingerprint: str
    dir: Path
    store: ObjectStore
    build_id: str
    lease: _Lease
    started: float = field(default_factory=time.time)

    def commit(self, manifest: Dict[str, Any]) -> Artifact:
        """Upload every file under this build's id, then write the manifest if no other build did: the
        artifact is now complete (ours, or the one that won)."""
        for name, rel in manifest.get("artifacts", {}).items():
            if not (self.dir / rel).exists():
                raise StoreError(f"{self.stage} declared artifact '{name}' -> {self.dir / rel}, which does not exist")
        st = self.store
        from concurrent.futures import ThreadPoolExecutor

        rels = _listing(self.dir)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:  # hashing (no GIL held) runs while the files upload
            hashed = pool.submit(lambda: {r: {"size": (self.dir / r).stat().st_size, "sha256": _sha256(self.dir / r)}
                                          for r in rels})
            if rels:
                st.fs.put([str(self.dir / rel) for rel in rels],
                          [st._key(self.stage, self.fingerprint, self.build_id, rel) for rel in rels])
            files = hashed.result()
        manifest = {**manifest, "build": self.build_id, "files": files}
        size = sum(f["size"] for f in files.values())
        body = json.dumps(manifest, indent=2).encode()
        try:
            st.fs.pipe_file(st._key(self.stage, self.fingerprint, MANIFEST), body, mode="create")
        except Exception as e:
            if not remote.precondition_failed(e):
                raise StoreError(f"could not commit {st.url}/{self.stage}/{self.fingerprint}: {e}") from e
            log.warning("  %-9s another run committed %s first: using its artifact", self.stage, self.fingerprint)
            art = st.get(self.stage, self.fingerprint)
            assert art is not None
            return art
        log.info("  %-9s stored   %d files, %.1f MB to %s (%.1fs)", self.stage, len(files), size / 1e6,
                 st.url, time.perf_counter() - t0)
        final = self.dir
        (final / MANIFEST).write_text(body.decode())
        verified = {}
        for rel in files:
            s = (final / rel).stat()
            verified[rel] = [s.st_size, s.st_mtime_ns]
        write_json_atomic(final / VERIFIED, verified, durable=False)
        return Artifact(self.stage, self.fingerprint, final, manifest)


__all__ = ["ObjectStore", "ObjectBuilder"]
