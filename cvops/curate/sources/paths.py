"""Paths of a source: its :class:`Scope` (the folders it may read), walking them, and telling files apart.

Resolving links is what keeps a dataset inside its root, and what makes two
names of one file count once, so every path is compared by its real path
(:func:`real_path`).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Set, Tuple

from cvops.curate.sources.fields import short
from cvops.media import IMAGE_EXTS

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
JUNK_NAMES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".localized"}
JUNK_DIRS = {"__macosx", ".spotlight-v100", ".trashes", ".fseventsd", "$recycle.bin"}
OUTSIDE = "path outside the dataset root"


@functools.lru_cache(maxsize=1 << 16)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def forget_links() -> None:
    """Forget the folders resolved so far: links may have changed since the last source was read."""
    _real_dir.cache_clear()


def real_path(path: Any) -> Optional[str]:
    """The real path (links resolved), or None for a name no file can have (NUL byte, ...).

    ``realpath(folder/name)`` is ``realpath(folder)/name`` unless ``name`` is itself a link, so each
    folder is resolved once (a dataset has few folders and many files); the cache is cleared per source.
    """
    try:
        text = os.fspath(path)
        folder, name = os.path.split(text)
        if name in ("", ".", "..") or "\x00" in text:
            return os.path.realpath(text)
        folder = folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)  # the cache key is absolute
        real = os.path.join(_real_dir(folder), name)
        return os.path.realpath(real) if os.path.islink(real) else real
    except (ValueError, OSError, TypeError):
        return None


def is_file(path: Path) -> bool:
    """Whether a regular file is there (False for a folder, a device, a broken link, an unusable name)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_dir(path: Path) -> bool:
    """Whether a folder is there (False for an unreadable or unusable path)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def probe(path: Path) -> Tuple[str, str]:
    """``("file", "")`` for a regular file; ``("absent", "")`` when there is none (or a folder stands
    there); ``("error", why)`` when whether it exists cannot be known (no permission on its folder, an
    I/O error, a link loop): a label file the reader could not see must not pass for "no labels"."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return "absent", ""
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return "absent", ""
        return "error", e.strerror or type(e).__name__
    return ("file", "") if stat.S_ISREG(st.st_mode) else ("absent", "")


@dataclass(frozen=True)
class Scope:
    """The folders a source may read from (real paths), unless ``allow_outside``."""

    roots: Tuple[str, ...] = ()
    allow_outside: bool = False

    def plus(self, *folders: Optional[Path]) -> "Scope":
        new = [r for r in (real_path(f) for f in folders if f is not None) if r is not None and r not in self.roots]
        return Scope(self.roots + tuple(dict.fromkeys(new)), self.allow_outside)

    def admits(self, path: Path) -> bool:
        real = real_path(path)
        if real is None:
            return False
        return self.allow_outside or any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def refusal(self, path: Path) -> Optional[Tuple[str, str]]:
        """(reason, detail) when ``path`` may not be read, else None."""
        text = os.fspath(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "file name is not valid UTF-8", "rename the file"
        if "\x00" in text or real_path(path) is None:
            return "file name is not a usable path", short(text, 120)
        if not self.admits(path):
            return OUTSIDE, (f"{text} (real path {real_path(path)}) is outside {', '.join(self.roots) or 'the source'}; "
                             "set data.allow_outside_paths=true if this source is yours")
        return None


def is_junk(path: Path) -> bool:
    """Files file managers write (macOS resource forks, Finder/Explorer caches), not data."""
    name = path.name.lower()
    return name.startswith("._") or name in JUNK_NAMES or any(p.lower() in JUNK_DIRS for p in path.parts)


def walk_files(root: Path, scope: Scope, ledger: Any = None) -> List[Path]:
    """Every file under ``root``, sorted. Folder links are followed once when they resolve inside
    ``scope``; one resolving outside is a row (when a :class:`~cvops.curate.sources.ledger.Ledger` is
    given) and is not read."""
    out: List[Path] = []
    seen: Set[str] = set()

    def onerror(e: OSError) -> None:
        if ledger is not None:
            ledger.add("file", str(e.filename), "folder cannot be listed", f"{type(e).__name__}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        real = real_path(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real or dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = Path(dirpath, d)
            if os.path.islink(sub) and not scope.admits(sub):
                if ledger is not None and f"link:{sub}" not in ledger.used:
                    ledger.used.add(f"link:{sub}")
                    ledger.add("file", str(sub), OUTSIDE, f"folder link to {real_path(sub)} (not read); "
                               "set data.allow_outside_paths=true to read it")
                continue
            keep.append(d)
        dirnames[:] = keep
        out += [Path(dirpath, f) for f in sorted(filenames)]
    return out


def subdirs(folder: Path) -> List[Path]:
    """The folders directly in ``folder``, sorted (none when it cannot be listed)."""
    try:
        return sorted(d for d in folder.iterdir() if is_dir(d))
    except OSError:
        return []


def image_files(folder: Path, scope: Scope, ledger: Any) -> List[Path]:
    """The image files under ``folder`` (:data:`cvops.media.IMAGE_EXTS`), OS metadata left out."""
    return [p for p in walk_files(folder, scope, ledger) if p.suffix.lower() in IMAGE_EXTS and not is_junk(p)]


def split_of(path: Path) -> Optional[str]:
    """The split a folder of ``path`` names (``train``, ``valid``, ``test``, ...; the innermost wins), else None."""
    for part in reversed(path.parts[:-1]):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None
