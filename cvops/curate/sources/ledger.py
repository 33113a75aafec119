"""The ledger: every rejected file, label or box with its reason, and every file under a source accounted for.

A reader marks the files it used (:meth:`Ledger.use`) and names the folders whose
files must all be accounted for (:meth:`Ledger.cover`); :func:`account_files`
then gives every other file under them a row (unsupported type, OS metadata,
nested archive, image no annotation lists, label file without an image), so
the counts in the curate report add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

from cvops.curate.sources.fields import decode_text, num, printable
from cvops.curate.sources.paths import OUTSIDE, Scope, is_file, is_junk, real_path, walk_files
from cvops.media import ARCHIVE_SUFFIXES, IMAGE_EXTS, VIDEO_EXTS


@dataclass
class Cover:
    """A folder whose every file must end up used by a reader or a row (:func:`account_files`)."""

    folder: Path
    by: str  # the annotation file (or archive) whose folder this is
    scope: Scope
    labels: bool = False  # a YOLO label folder: unused .txt files are label files without an image


@dataclass
class Ledger:
    """Every rejected file, label or box, with its reason; and which files the readers used.

    Row kinds: ``image`` (an image that came in and was quarantined), ``box``, ``label`` (an
    annotation or label file, or an entry of one), ``video``, ``file`` (a file that is not an
    image of the source: unsupported type, OS metadata, nested archive, unlisted image).
    """

    rows: List[Dict[str, Any]] = field(default_factory=list)
    used: Set[str] = field(default_factory=set)  # real paths of files a reader consumed
    covers: List[Cover] = field(default_factory=list)  # folders whose every file must be accounted for

    def add(self, kind: str, ref: str, reason: str, detail: str = "", boxes: int = 0) -> Dict[str, Any]:
        """Record one rejected ``ref`` (and the ``boxes`` lost with it); returns the row (a reader may add
        boxes to it later)."""
        row = {"kind": kind, "file": printable(ref), "reason": reason, "detail": printable(detail), "boxes": boxes}
        self.rows.append(row)
        return row

    def count(self, kind: str) -> int:
        """Rows of one kind."""
        return sum(1 for r in self.rows if r["kind"] == kind)

    def boxes(self) -> int:
        """Boxes lost in all rows."""
        return sum(r["boxes"] for r in self.rows)

    def use(self, path: Path) -> None:
        """Mark a file as consumed by a reader (it needs no row of its own)."""
        real = real_path(path)
        if real is not None:
            self.used.add(real)

    def cover(self, folder: Path, by: Any, scope: Scope, labels: bool = False) -> None:
        """Ask :func:`account_files` to account for every file under ``folder`` (``by``: the file that names it;
        ``labels``: a YOLO label folder, whose unused ``.txt`` files are labels without an image)."""
        self.covers.append(Cover(Path(folder), str(by), scope, labels))


def account_files(ledger: Ledger) -> None:
    """Give every file under the covered folders that no reader used a row with its reason."""
    for cover in ledger.covers:
        for f in walk_files(cover.folder, cover.scope, ledger):
            key = real_path(f)
            if key is None or key in ledger.used:
                continue
            ledger.used.add(key)
            kind, reason, detail, boxes = _classify(f, cover)
            ledger.add(kind, str(f), reason, detail, boxes)
    ledger.covers.clear()


def _classify(f: Path, cover: Cover) -> Tuple[str, str, str, int]:
    """(kind, reason, detail, boxes) of a file no reader used."""
    ext = f.suffix.lower()
    if is_junk(f):
        return "file", "OS metadata file (not data)", "written by a file manager (__MACOSX/, ._*, .DS_Store, " \
                                                      "Thumbs.db); safe to delete", 0
    if not is_file(f):
        return "file", "not a regular file", "a link to nothing, a pipe or a device", 0
    if not cover.scope.admits(f):
        return "file", OUTSIDE, f"a link to {real_path(f)} (not read); set data.allow_outside_paths=true to read it", 0
    if f.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "file", "nested archive (not extracted)", "list it as its own entry in data.sources", 0
    if cover.labels and ext == ".txt":
        try:
            lines = [line.split() for line in decode_text(f.read_bytes()).splitlines() if line.strip()]
        except OSError as e:
            return "label", "label file without an image", f"cannot be read ({e.strerror}): its boxes are not counted", 0
        rows = sum(1 for parts in lines if len(parts) >= 5 and all(num(v) is not None for v in parts[:5]))
        if lines and not rows:  # classes.txt, a README: text, not boxes
            return "file", "text file that is not a YOLO label file", f"{len(lines)} line(s), none a box row", 0
        return "label", "label file without an image", f"{rows} box row(s)", rows
    if ext in IMAGE_EXTS:
        return "file", "image not listed in the annotations", f"not referenced by {cover.by}", 0
    if ext in VIDEO_EXTS:
        return "file", "video file in an image source (not read)", \
            "list it as its own entry in data.sources with format: video", 0
    return "file", "unsupported file type", \
        f"{ext or f.name!r} is not an image cvops reads ({' '.join(sorted(IMAGE_EXTS))}) nor an annotation file " \
        f"of {cover.by}", 0
