"""The state of files a stage reads from outside the recipe, for its fingerprint.

A recipe names files by path, so the path alone cannot say whether they
changed. :func:`root_state` stamps one file or folder (local or in object
storage): for a local file its size and modification time, plus its content
hash when it is small enough to read on every run (``hash_below`` bytes; all
of it for the suffixes asked for); for an object in storage its size and ETag.
Folders are walked through links (a linked folder is read by the stages too),
each real folder once, so a link loop ends.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Collection, Iterable, Optional, Tuple

from cvops import remote

HASH_BELOW = 4 << 20


def stamp_file(p: str, st: os.stat_result, hash_suffixes: Optional[Collection[str]] = None,
               hash_below: int = HASH_BELOW) -> str:
    """``size:mtime`` of a regular file, plus the start of its sha256 when it is at most ``hash_below`` bytes
    and its suffix is one of ``hash_suffixes`` (None: any suffix)."""
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    suffix_ok = hash_suffixes is None or os.path.splitext(p)[1].lower() in hash_suffixes
    if suffix_ok and st.st_size <= hash_below:
        try:
            with open(p, "rb") as f:
                stamp += ":" + hashlib.sha256(f.read()).hexdigest()[:16]
        except OSError:
            pass
    return stamp


def local_state(root: str, hash_suffixes: Optional[Collection[str]] = None) -> Iterable[Tuple[str, str]]:
    """``(relative path, stamp)`` of a local file or of every file under a folder, in a fixed order."""
    p = os.path.expanduser(root)
    try:
        st = os.stat(p)
    except OSError:
        yield "", "missing"
        return
    if not stat.S_ISDIR(st.st_mode):
        yield "", stamp_file(p, st, hash_suffixes)
        return
    seen = set()
    for dirpath, dirnames, files in os.walk(p, followlinks=True):
        try:
            dst = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (dst.st_dev, dst.st_ino) in seen:  # a link back to a folder already walked: once is enough
            dirnames[:] = []
            yield os.path.relpath(dirpath, p), "loop"
            continue
        seen.add((dst.st_dev, dst.st_ino))
        dirnames.sort()
        for name in sorted(files):
            f = os.path.join(dirpath, name)
            try:
                fst = os.stat(f)  # through links: a link to another image is that image's state
            except OSError:
                yield os.path.relpath(f, p), "broken"
                continue
            if stat.S_ISREG(fst.st_mode):
                yield os.path.relpath(f, p), stamp_file(f, fst, hash_suffixes)


def remote_state(root: str) -> Iterable[Tuple[str, str]]:
    """``(relative key, size:etag)`` of an object or of every object under a prefix."""
    try:
        found = remote.listing(root)
    except FileNotFoundError:
        found = {}
    except Exception as e:  # no credentials (botocore's own error), no endpoint: the stage says what is wrong
        yield "", f"unreachable:{type(e).__name__}"
        return
    if not found:
        yield "", "missing"
    for rel in sorted(found):
        yield rel, f"{found[rel]['size']}:{found[rel]['etag']}"


def root_state(root: str, hash_suffixes: Optional[Collection[str]] = None) -> str:
    """A hash of the state of one folder or file (local or in storage)."""
    h = hashlib.sha256()
    for rel, stamp in (remote_state(root) if remote.is_url(root) else local_state(root, hash_suffixes)):
        h.update(f"{rel}\0{stamp}\n".encode())
    return h.hexdigest()[:16]
