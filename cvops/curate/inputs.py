"""What curate reads from outside the recipe: the state of its data enters its fingerprint, and
data in object storage (``data.path: s3://...``) is fetched into the curate artifact.

A recipe names its data by path, so the path alone cannot say whether the data changed. The curate
fingerprint therefore also covers the *state* of every folder and file a source reads
(:func:`signature`): for a local file its size and modification time (and, for an annotation file of
at most 4 MiB, its content hash, so a label edited in place with its time restored still counts);
for an object in storage its size and ETag. Adding, removing, replacing or relabelling an image
rebuilds curate and everything downstream; an unchanged folder is cached as before.

What a source reads (:func:`source_roots`): a folder path is the folder; a COCO json is its dataset
folder (:func:`cvops.curate.sources.coco.coco_root`); a YOLO ``data.yaml`` or VOC file is its folder; a
video or an archive is that file; ``images_root`` is that folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List

from cvops import filestate, remote

log = logging.getLogger(__name__)

from cvops.errors import SourceError  # noqa: E402  (one hierarchy: cvops.errors)


def iter_sources(data: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    """The configured sources, in order: ``data.sources`` entries (``data=sources``), else
    ``data`` itself; then each ``data.extra`` entry (e.g. reviewed edge cases from
    ``cvops review``), which is added to whatever the main source is.

    Entries of ``sources`` and ``extra`` inherit the other ``data`` keys (``classes``,
    ``class_map``, ``fps``, ...) and override them with their own (``cvops review`` prints
    its entry with ``allow_outside_paths: true``: it lists the reviewed images where the
    monitor stored them).

    Raises:
        SourceError: an entry without ``format`` (or an ``extra`` entry without ``path``),
            or ``sources`` set without ``data=sources``.
    """
    for src in _entries(data):
        yield _absolute(src)


def _absolute(src: Dict[str, Any]) -> Dict[str, Any]:
    """``src`` with its local ``path`` and ``images_root`` made absolute (against the working directory, where
    the user typed them): every sample, COCO export and FiftyOne ``filepath`` then names its image the same way,
    and the fingerprint's data state says which folder was read, whatever the working directory of a later run."""
    out = dict(src)
    for k in ("path", "images_root"):
        v = out.get(k)
        if v and not remote.is_url(str(v)):
            out[k] = os.path.abspath(os.path.expanduser(str(v)))
    return out


def _entries(data: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    common = {k: v for k, v in data.items() if k not in ("sources", "extra")}
    if data.get("sources") and data.get("format") != "sources":
        raise SourceError(f"data.sources is set but data.format={data.get('format')}; select data=sources "
                          "to merge several sources")
    if data.get("format") == "sources":
        if not data.get("sources"):
            raise SourceError("data=sources needs a non-empty data.sources list")
        for i, s in enumerate(data["sources"]):
            if "format" not in s:
                raise SourceError(f"data.sources[{i}] has no 'format' (one of coco, yolo, images, video, synthetic)")
            yield {**common, **s}
    else:
        yield data
    for i, e in enumerate(data.get("extra") or []):
        if "format" not in e:
            raise SourceError(f"data.extra[{i}] has no 'format' (one of coco, yolo, voc, images, video, synthetic)")
        if e["format"] == "sources":
            raise SourceError(f"data.extra[{i}]: format 'sources' cannot be nested; list each source in data.extra")
        if e["format"] != "synthetic" and not e.get("path"):
            # without this, the entry would silently re-read the main data.path in another format
            raise SourceError(f"data.extra[{i}] (format {e['format']}) has no 'path'")
        yield {**common, **e}


LABEL_SUFFIXES = {".json", ".txt", ".xml", ".yaml", ".yml", ".csv"}
_FILE_SOURCES = ("video", "images")  # a file path of these formats is the whole source


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if remote.is_url(path) else str(Path(path).expanduser().parent)


def _is_file_like(path: str) -> bool:
    """A path that names one file: it exists as a file, or (in storage, where folders are prefixes) has a suffix."""
    if remote.is_url(path):
        return bool(posixpath.splitext(path.rstrip("/"))[1]) and not path.endswith("/")
    return Path(path).expanduser().is_file()


def source_roots(src: Dict[str, Any]) -> List[str]:
    """The folders and files one source (an :func:`iter_sources` entry) reads."""
    if src.get("format") == "synthetic":
        return []
    roots: List[str] = []
    path = src.get("path")
    if path:
        path = str(path)
        if not _is_file_like(path) or src.get("format") in _FILE_SOURCES:
            roots.append(path)
        elif any(path.lower().endswith(s) for s in (".zip", ".tar", ".tgz", ".gz", ".bz2", ".tbz2", ".xz", ".txz",
                                                    ".7z", ".rar", ".mp4", ".mkv", ".avi", ".mov", ".webm")):
            roots.append(path)
        elif src.get("format") == "coco":
            here = _parent(path)
            base = here.rsplit("/", 1)[-1] if remote.is_url(here) else Path(here).name
            roots.append(_parent(here) if base.lower() == "annotations" else here)
        else:
            roots.append(_parent(path))
    if src.get("images_root"):
        roots.append(str(src["images_root"]))
    return roots


def root_state(root: str) -> str:
    """A hash of the state of one folder or file a source reads (annotation files of at most 4 MiB by content)."""
    return filestate.root_state(root, LABEL_SUFFIXES)


def signature(config: Any, store_root: Any = None) -> str:
    """The state of everything curate's sources read (``config``: curate's typed view), for its fingerprint."""
    import dataclasses

    data = dataclasses.asdict(config.data) if dataclasses.is_dataclass(config.data) else dict(config.data)
    t0 = time.perf_counter()
    states = []
    try:
        sources = list(iter_sources(data))
    except ValueError:  # curate will say what is wrong with the sources when it runs
        return "unreadable-sources"
    for src in sources:
        states += [f"{r}={root_state(r)}" for r in source_roots(src)]
    log.debug("curate data state: %d roots in %.3fs", len(states), time.perf_counter() - t0)
    return hashlib.sha256("\n".join(states).encode()).hexdigest()[:16] if states else ""


# ------------------------------------------------------------------ fetch
def fetch(src: Dict[str, Any], dest: Path) -> Dict[str, Any]:
    """``src`` with every ``s3://...`` root downloaded under ``dest`` and its paths pointing there.

    The copies are part of the curate artifact, so the dataset's images live in the store like any
    other curate output, and their files are counted like local ones.
    """
    roots = [r for r in source_roots(src) if remote.is_url(r)]
    if not roots:
        return src
    out = dict(src)
    for i, root in enumerate(roots):
        fs, key = remote.filesystem(root)
        name = posixpath.basename(key.rstrip("/")) or f"root-{i}"
        local = dest / f"{i}-{name}"
        t0 = time.perf_counter()
        try:
            is_dir = fs.isdir(key)
        except Exception as e:  # OSError from s3fs, or botocore's NoCredentialsError and kin
            raise SourceError(f"cannot read {root}: {type(e).__name__}: {e}; check the URL, AWS_ENDPOINT_URL "
                              "and the AWS credentials") from e
        if is_dir:
            local.mkdir(parents=True, exist_ok=True)
            keys = sorted(k for k, info in fs.find(key, detail=True).items() if info.get("type") != "directory")
            rels = [posixpath.relpath(k, key.rstrip("/")) for k in keys]
            unsafe = [r for r in rels if not remote.safe_rel(r)]
            if unsafe:  # a key such as a/../../x would be written outside the artifact
                raise SourceError(f"{root}: object key(s) that would leave the download folder, e.g. "
                                  f"{unsafe[0][:120]!r}; rename them in the bucket")
            fs.get(keys, [str(local / r) for r in rels])
        elif fs.exists(key):
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get(key, str(local))
        else:
            raise SourceError(f"{root} does not exist (or is not readable with these credentials); check the "
                              "URL, AWS_ENDPOINT_URL and the AWS credentials")
        n = sum(1 for p in local.rglob("*") if p.is_file()) if local.is_dir() else 1
        size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file()) if local.is_dir() else local.stat().st_size
        log.warning("curate: fetched %s -> %s (%d files, %.1f MB, %.1fs)", root, local, n, size / 1e6,
                    time.perf_counter() - t0)
        for k in ("path", "images_root"):
            v = out.get(k)
            if v and remote.is_url(str(v)):
                v = str(v)
                if v.rstrip("/") == root.rstrip("/"):
                    out[k] = str(local)
                elif v.startswith(root.rstrip("/") + "/"):
                    out[k] = str(local / v[len(root.rstrip("/")) + 1:])
    return out

