"""Readers: every source format -> a list of :class:`Item` (one per image).

Readers only parse; they never drop anything silently. What they cannot use
(a label file that does not parse, a label whose image is missing, a video the
decoder cannot open) goes to the :class:`Ledger` with its reason, and the
counts in the curate report add up.

Three rules hold for every format:

- **Every file is counted.** A reader marks the files it used and names the
  folders whose files must be accounted for; :func:`account_files` then gives
  every other file under them a row (unsupported type, OS metadata, nested
  archive, image no annotation lists, label file without an image).
- **Paths stay inside the dataset.** An image, label or list file whose real
  path (links resolved) is outside the source's :class:`Scope` (the folder of
  ``data.path``, ``data.images_root``, an archive's extraction folder) is
  quarantined as "path outside the dataset root", unless
  ``data.allow_outside_paths`` is true.
- **Bad fields are rows.** A malformed entry (missing id, a width of ``"abc"``,
  a NaN coordinate) becomes a row naming the file and the field; only a file
  that cannot be read at all raises :class:`SourceError`.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")
JUNK_NAMES = {".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", ".localized"}
JUNK_DIRS = {"__macosx", ".spotlight-v100", ".trashes", ".fseventsd", "$recycle.bin"}
OUTSIDE = "path outside the dataset root"
log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
YOLO_LAYOUTS = ("Ultralytics: images/<split>/<name>.jpg -> labels/<split>/<name>.txt (the last 'images' folder "
                "of the image path replaced by 'labels'); Roboflow: <split>/images -> <split>/labels; "
                "or <name>.txt beside each image")


from cvops.curate.inputs import SourceError, iter_sources  # noqa: E402,F401  (defined there: light to import)


@dataclass
class Box:
    """One labelled box in absolute pixels (top-left x, y, width, height)."""

    label: str
    x: float
    y: float
    w: float
    h: float
    origin: str  # file:line (or file#annotation-id) it came from
    # the instance's segmentation as the file gave it (COCO polygons or RLE, in pixels of the frame the labels
    # were drawn in); checked only when curate.masks is true
    segmentation: Any = None
    mask: Optional[Dict[str, Any]] = None  # after validation: whole-image compressed RLE (cvops.masks)


@dataclass
class Item:
    """One image as a source describes it."""

    path: Path  # image file, or the video for a frame (see frame_index)
    ref: str  # how reports name it: the file, or video#frame
    source: str  # data.format (or sources[i].format) it came from
    boxes: Optional[List[Box]] = None  # None: the source has no labels for it
    declared_size: Optional[Tuple[int, int]] = None  # (w, h) the labels assume
    split: Optional[str] = None  # split the source assigned
    group: Optional[str] = None  # frames of one video share a group
    meta: Dict[str, Any] = field(default_factory=dict)  # video, frame_index, timestamp
    max_pixels: Optional[int] = None  # decode limit (curate.max_pixels); None: validate's default


@dataclass
class _Cover:
    folder: Path
    by: str  # the annotation file (or archive) whose folder this is
    scope: "Scope"
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
    covers: List[_Cover] = field(default_factory=list)  # folders whose every file must be accounted for

    def add(self, kind: str, ref: str, reason: str, detail: str = "", boxes: int = 0) -> Dict[str, Any]:
        row = {"kind": kind, "file": _printable(ref), "reason": reason, "detail": _printable(detail), "boxes": boxes}
        self.rows.append(row)
        return row

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r["kind"] == kind)

    def boxes(self) -> int:
        return sum(r["boxes"] for r in self.rows)

    def use(self, path: Path) -> None:
        real = _real(path)
        if real is not None:
            self.used.add(real)

    def cover(self, folder: Path, by: Any, scope: "Scope", labels: bool = False) -> None:
        self.covers.append(_Cover(Path(folder), str(by), scope, labels))


# ------------------------------------------------------------------- paths
def _printable(s: Any) -> str:
    """Text safe for the CSV/JSON reports (undecodable file-name bytes shown escaped)."""
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


@functools.lru_cache(maxsize=1 << 16)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def _real(path: Any) -> Optional[str]:
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


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _probe(path: Path) -> Tuple[str, str]:
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


def decode_text(data: bytes, errors: str = "replace") -> str:
    """A label or list file's text: UTF-8 (a byte order mark dropped), or UTF-16 with its byte order mark
    (what Windows PowerShell 5's ``>`` writes). With ``errors="replace"`` bytes that do not decode become
    U+FFFD, so their line fails to parse and is a row of its own; ``"strict"`` raises UnicodeDecodeError."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", errors=errors)
    return data.decode("utf-8-sig", errors=errors)


@dataclass(frozen=True)
class Scope:
    """The folders a source may read from (real paths), unless ``allow_outside``."""

    roots: Tuple[str, ...] = ()
    allow_outside: bool = False

    def plus(self, *folders: Optional[Path]) -> "Scope":
        new = [r for r in (_real(f) for f in folders if f is not None) if r is not None and r not in self.roots]
        return Scope(self.roots + tuple(dict.fromkeys(new)), self.allow_outside)

    def admits(self, path: Path) -> bool:
        real = _real(path)
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
        if "\x00" in text or _real(path) is None:
            return "file name is not a usable path", _short(text, 120)
        if not self.admits(path):
            return OUTSIDE, (f"{text} (real path {_real(path)}) is outside {', '.join(self.roots) or 'the source'}; "
                             "set data.allow_outside_paths=true if this source is yours")
        return None


def is_junk(path: Path) -> bool:
    """Files file managers write (macOS resource forks, Finder/Explorer caches), not data."""
    name = path.name.lower()
    return name.startswith("._") or name in JUNK_NAMES or any(p.lower() in JUNK_DIRS for p in path.parts)


def walk_files(root: Path, scope: Scope, ledger: Optional[Ledger] = None) -> List[Path]:
    """Every file under ``root``, sorted. Folder links are followed once when they resolve inside
    ``scope``; one resolving outside is a row (when a ledger is given) and is not read."""
    out: List[Path] = []
    seen: Set[str] = set()

    def onerror(e: OSError) -> None:
        if ledger is not None:
            ledger.add("file", str(e.filename), "folder cannot be listed", f"{type(e).__name__}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        real = _real(dirpath)
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
                    ledger.add("file", str(sub), OUTSIDE, f"folder link to {_real(sub)} (not read); "
                               "set data.allow_outside_paths=true to read it")
                continue
            keep.append(d)
        dirnames[:] = keep
        out += [Path(dirpath, f) for f in sorted(filenames)]
    return out


def _subdirs(folder: Path) -> List[Path]:
    try:
        return sorted(d for d in folder.iterdir() if _is_dir(d))
    except OSError:
        return []


def _image_files(folder: Path, scope: Scope, ledger: Optional[Ledger]) -> List[Path]:
    return [p for p in walk_files(folder, scope, ledger) if p.suffix.lower() in IMAGE_EXTS and not is_junk(p)]


def _split_of(path: Path) -> Optional[str]:
    for part in reversed(path.parts[:-1]):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


# ----------------------------------------------------------- field values
def _num(v: Any) -> Optional[float]:
    """A number from a JSON/XML field (int, float or numeric text), else None."""
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            return float(v.strip())
    except (ValueError, OverflowError):
        return None
    return None


def _id_key(v: Any) -> Any:
    """An id usable as a key (int, or text; '7' and 7 are the same id), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip():
        s = v.strip()
        return int(s) if s.isascii() and s.isdigit() else s
    return None


def _name(v: Any) -> Optional[str]:
    """A class name: non-empty text (numbers are written as text), else None."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return None
    s = str(v).strip()
    return s or None


def _declared_size(w: Any, h: Any) -> Tuple[bool, Optional[Tuple[int, int]]]:
    """(well formed, (w, h) or None for unknown). 0x0 and missing values mean unknown."""
    if w is None or h is None or (isinstance(w, str) and not w.strip()) or (isinstance(h, str) and not h.strip()):
        return True, None
    nw, nh = _num(w), _num(h)
    if nw is None or nh is None or not (math.isfinite(nw) and math.isfinite(nh)):
        return False, None
    if nw == nh == 0:
        return True, None
    if nw <= 0 or nh <= 0 or nw != int(nw) or nh != int(nh):
        return False, None
    return True, (int(nw), int(nh))


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: {what} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise SourceError(f"{path}: {what} cannot be read ({e.strerror})") from e


# -------------------------------------------------------------------- COCO
def coco_root(json_path: Path) -> Path:
    """The dataset folder of a COCO json: its folder, or the parent of an ``annotations/`` folder."""
    here = json_path.parent
    return here.parent if here.name.lower() == "annotations" else here


def read_coco(json_path: Path, images_root: Optional[Path], source: str, ledger: Ledger,
              group_field: str = "video", scope: Optional[Scope] = None) -> Tuple[List[Item], List[str]]:
    """Items of a COCO detection file, and its category names (in file order).

    Images are looked up under ``images_root`` if given, else beside the json, in
    ``images/`` beside it, or in ``images/`` one level up (``annotations/`` + ``images/``).
    Entries that cannot be used are rows: a bad image entry takes its annotations' boxes
    into its row; a second image with an ``id`` already used is a row (its annotations go
    to the first); two entries naming the same file become one sample with both boxes.
    """
    data = _load_json(json_path)
    lists = {k: _coco_list(data, k, json_path) for k in ("images", "annotations", "categories")}
    scope = (scope or Scope()).plus(coco_root(json_path), images_root)
    ledger.use(json_path)
    cats = _coco_categories(lists["categories"], json_path, ledger)
    reader = _CocoImages(json_path, images_root, source, ledger, group_field, scope)
    for k, entry in enumerate(lists["images"]):
        reader.add(k, entry)
    for k, a in enumerate(lists["annotations"]):
        reader.annotate(k, a, cats)
    reader.cover()
    return reader.items, list(dict.fromkeys(cats.values()))


def _load_json(json_path: Path) -> Dict[str, Any]:
    text = _read_text(json_path, "the COCO file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{json_path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except RecursionError as e:
        raise SourceError(f"{json_path}: JSON nested too deeply to be a COCO file") from e
    if not isinstance(data, dict):
        raise SourceError(f"{json_path}: not a COCO detection file (the top level is a {type(data).__name__}, "
                          "not an object with 'images', 'annotations' and 'categories')")
    return data


def _coco_list(data: Dict[str, Any], key: str, json_path: Path) -> List[Any]:
    if key not in data:
        raise SourceError(f"{json_path}: not a COCO detection file (no '{key}' list)")
    if not isinstance(data[key], list):
        raise SourceError(f"{json_path}: '{key}' is a {type(data[key]).__name__}, not a list")
    return data[key]


def _coco_categories(cats: List[Any], json_path: Path, ledger: Ledger) -> Dict[Any, str]:
    """{category id: name}; malformed or repeated entries are rows (their annotations: unknown category_id)."""
    out: Dict[Any, str] = {}
    for k, c in enumerate(cats):
        where = f"{json_path}#categories[{k}]"
        key = _id_key(c.get("id")) if isinstance(c, dict) else None
        name = _name(c.get("name")) if isinstance(c, dict) else None
        if key is None or name is None:
            ledger.add("label", where, "category entry without an 'id' and a 'name'",
                       f"{_short(c)}; its annotations are counted as 'unknown category_id'")
        elif key in out:
            ledger.add("label", where, "duplicate category id",
                       f"id {key!r} is '{out[key]}' (first entry) and '{name}': its annotations count as '{out[key]}'")
        else:
            out[key] = name
    return out


class _CocoImages:
    """COCO image entries -> items, and annotations -> their boxes (or rows)."""

    def __init__(self, json_path: Path, images_root: Optional[Path], source: str, ledger: Ledger,
                 group_field: str, scope: Scope) -> None:
        self.json_path, self.images_root, self.source = json_path, images_root, source
        self.ledger, self.group_field, self.scope = ledger, group_field, scope
        self.root = images_root or json_path.parent
        self.items: List[Item] = []
        self.by_id: Dict[Any, Item] = {}
        self.rejected: Dict[Any, Dict[str, Any]] = {}  # id -> row of a quarantined entry (counts its boxes)
        self.by_file: Dict[str, Tuple[Any, Item]] = {}
        self.bases: Set[Path] = set()  # folders images were found in (their other files are accounted for)

    def add(self, k: int, im: Any) -> None:
        where = f"{self.json_path}#images[{k}]"
        if not isinstance(im, dict):
            self.ledger.add("image", where, "image entry is not an object", _short(im))
            return
        key = _id_key(im.get("id"))
        got = self._item(im)
        ref = got.ref if isinstance(got, Item) else where
        if key is None:
            self.ledger.add("image", ref, "image entry without a usable 'id'",
                            f"{where}: id={_short(im.get('id'))}; give every image a unique id")
        elif key in self.by_id or key in self.rejected:
            first = self.by_id[key].ref if key in self.by_id else self.rejected[key]["file"]
            self.ledger.add("image", ref, "duplicate image id",
                            f"{where}: id {key!r} is already {first}; the annotations with image_id {key!r} "
                            f"went to {first}")
        elif isinstance(got, tuple):
            self.rejected[key] = self.ledger.add("image", got[2] or where, got[0], got[1])
        else:
            self._keep(key, got, where)
            return
        path = got.path if isinstance(got, Item) else got[3]
        if path is not None:
            self.ledger.use(path)  # a row now: not counted again as a file (nor a link to one) no annotation lists

    def _keep(self, key: Any, item: Item, where: str) -> None:
        same_key = item.ref if "frame_index" in item.meta else (_real(item.path) or item.ref)
        if same_key in self.by_file:
            first_id, first = self.by_file[same_key]
            self.ledger.add("label", item.ref, "image listed twice in 'images' (same file)",
                            f"{where} (id {key!r}) and id {first_id!r} name the same file: one sample with the "
                            "boxes of both entries")
            self.by_id[key] = first
            return
        self.by_file[same_key] = (key, item)
        self.by_id[key] = item
        self.items.append(item)
        self.ledger.use(item.path)

    def _item(self, im: Dict[str, Any]) -> Any:
        """An Item, or (reason, detail, ref, path or None) when the entry cannot be one."""
        ok, declared = _declared_size(im.get("width"), im.get("height"))
        video, frame = im.get(self.group_field), im.get("frame_index")
        if video is not None and frame is not None:  # a frame of a labelled video (cvops synthetic)
            if not isinstance(video, str) or not video or isinstance(frame, bool) or not isinstance(frame, int) \
                    or frame < 0:
                return ("video frame entry without a usable 'video' and 'frame_index'",
                        f"video={_short(video)} frame_index={_short(frame)}", "", None)
            path = self.root / video
            item = Item(path, f"{video}#{frame}", self.source, [], declared, group=str(video),
                        meta={"video": str(path), "frame_index": frame, "timestamp": im.get("timestamp")})
        else:
            name = im.get("file_name")
            if not isinstance(name, str) or not name.strip() or "\x00" in name:
                return "image entry without a usable 'file_name'", f"file_name={_short(name)}", "", None
            path = self._locate(name)
            item = Item(path, str(path), self.source, [], declared, split=_split_of(Path(name)))
        refused = self.scope.refusal(item.path)
        if refused:
            return refused[0], refused[1], item.ref, item.path
        if not ok:
            return ("image entry has a malformed 'width'/'height'",
                    f"width={_short(im.get('width'))} height={_short(im.get('height'))}; "
                    "write positive integers (pixels) or remove both", item.ref, item.path)
        return item

    def _locate(self, name: str) -> Path:
        if self.images_root is not None or Path(name).is_absolute():
            return next((self.root / v for v in _spellings(name) if _is_file(self.root / v)), self.root / name)
        here = self.json_path.parent
        hits = [(b, b / v) for b in (here, here / "images", here.parent / "images") for v in _spellings(name)
                if _is_file(b / v)]
        inside = [h for h in hits if self.scope.admits(h[1])]
        if inside:
            self.bases.add(inside[0][0])
        return (inside or hits or [(here, here / name)])[0][1]

    def annotate(self, k: int, a: Any, cats: Dict[Any, str]) -> None:
        if not isinstance(a, dict):
            self.ledger.add("box", f"{self.json_path}#annotations[{k}]", "annotation is not an object", _short(a),
                            boxes=1)
            return
        origin = f"{self.json_path}#annotation-{_short(a['id'], 40)}" if "id" in a else \
            f"{self.json_path}#annotations[{k}]"
        key = _id_key(a.get("image_id"))
        if key in self.rejected:
            self.rejected[key]["boxes"] += 1
            return
        item = self.by_id.get(key)
        if item is None:
            self.ledger.add("label", origin, "annotation for an image id that is not in 'images'",
                            f"image_id={_short(a.get('image_id'))}", boxes=1)
            return
        cat = _id_key(a.get("category_id"))
        if cat not in cats:
            self.ledger.add("box", origin, "unknown category_id", f"category_id={_short(a.get('category_id'))}",
                            boxes=1)
            return
        bbox, why = _coco_bbox(a.get("bbox"))
        if bbox is None:
            self.ledger.add("box", origin, why, _short(a.get("bbox")), boxes=1)
            return
        item.boxes.append(Box(cats[cat], *bbox, origin, segmentation=a.get("segmentation") or None))  # type: ignore[union-attr]

    def cover(self) -> None:
        folders = [self.images_root] if self.images_root is not None else sorted(self.bases)
        for f in folders:
            if _is_dir(f) and self.scope.admits(f):
                self.ledger.cover(f, self.json_path, self.scope)


def _spellings(name: str) -> List[str]:
    """A ``file_name`` as written, then as the machine that wrote it meant it: Windows separators
    (``images\\0001.jpg``) as ``/``, and the other Unicode normalisation (macOS writes names
    decomposed, most tools composed)."""
    import unicodedata

    slash = name.replace("\\", "/")
    return list(dict.fromkeys([name, slash, unicodedata.normalize("NFC", slash), unicodedata.normalize("NFD", slash)]))


def _coco_bbox(v: Any) -> Tuple[Optional[Tuple[float, float, float, float]], str]:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None, "bbox is not [x, y, w, h]"
    nums = [_num(x) for x in v]
    if any(n is None for n in nums):
        return None, "bbox is not [x, y, w, h]"
    if not all(math.isfinite(n) for n in nums):  # type: ignore[arg-type]
        return None, "bbox has a non-finite value (NaN or infinity)"
    return (nums[0], nums[1], nums[2], nums[3]), ""  # type: ignore[return-value]


# -------------------------------------------------------------------- YOLO
def read_yolo(yaml_path: Path, source: str, ledger: Ledger,
              scope: Optional[Scope] = None) -> Tuple[List[Item], List[str]]:
    """Items of a YOLO ``data.yaml`` and its class names.

    Split entries (``train``/``val``/``test``) may be folders (read recursively) or
    ``.txt`` files listing image paths, relative to ``path`` (itself relative to the
    yaml), written on another machine (found by their tail), or lists of either. Splits
    on disk that the yaml does not list are read too (``<split>/images`` and
    ``images/<split>``). Labels are found in every layout of :data:`YOLO_LAYOUTS`.

    Raises:
        SourceError: the yaml does not parse or has no usable ``names``; or classes are
            declared and no image has a label file (the message says where cvops looked).
    """
    import yaml

    text = _read_text(yaml_path, "data.yaml")
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise SourceError(f"{yaml_path}: YAML does not parse: {e}") from e
    if not isinstance(data, dict):
        raise SourceError(f"{yaml_path}: not a YOLO data.yaml (the top level is a {type(data).__name__}, "
                          "not a mapping with 'names' and 'train'/'val')")
    names = _yolo_names(data.get("names"), yaml_path)
    scope = (scope or Scope()).plus(yaml_path.parent)
    ledger.use(yaml_path)
    reader = _Yolo(yaml_path, data, names, scope, source, ledger)
    return reader.read(), list(dict.fromkeys(names.values()))


def _yolo_names(names: Any, yaml_path: Path) -> Dict[int, str]:
    """``names`` as a list or a dict (int or numeric-text keys) -> {class index: name}."""
    if isinstance(names, list):
        pairs: Iterable[Tuple[Any, Any]] = enumerate(names)
    elif isinstance(names, dict):
        pairs = names.items()
    else:
        raise SourceError(f"{yaml_path}: no 'names' list of classes (write names: [a, b] or names: {{0: a, 1: b}})")
    out: Dict[int, str] = {}
    for k, v in pairs:
        idx = _id_key(k)
        if not isinstance(idx, int) or idx < 0:
            raise SourceError(f"{yaml_path}: names key {k!r} is not a class index (0, 1, ...)")
        if idx in out:
            raise SourceError(f"{yaml_path}: names lists class index {idx} twice")
        if _name(v) is None:
            raise SourceError(f"{yaml_path}: names[{k!r}] = {_short(v)} is not a class name")
        out[idx] = _name(v)  # type: ignore[assignment]
    if not out:
        raise SourceError(f"{yaml_path}: 'names' is empty; list the classes")
    return dict(sorted(out.items()))


def _entries(data: Dict[str, Any], key: str, yaml_path: Path) -> List[str]:
    v = data.get(key)
    if v is None:
        return []
    vals = v if isinstance(v, list) else [v]
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in vals):
        raise SourceError(f"{yaml_path}: '{key}' must be a path or a list of paths, not {_short(v)}")
    return [str(x) for x in vals if str(x).strip()]


def label_candidates(image: Path) -> List[Path]:
    """Where a YOLO label of ``image`` may be: the last ``images`` folder of its path replaced by
    ``labels`` (Ultralytics; Roboflow's <split>/images too), then beside the image."""
    parts = image.parts
    out = []
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() == "images":
            word = "Labels" if parts[i] == "Images" else "LABELS" if parts[i] == "IMAGES" else "labels"
            out.append(Path(*parts[:i], word, *parts[i + 1:]).with_suffix(".txt"))
            break
    out.append(image.with_suffix(".txt"))
    return out


class _Yolo:
    """One data.yaml: its split entries -> items with their normalised boxes."""

    def __init__(self, yaml_path: Path, data: Dict[str, Any], names: Dict[int, str], scope: Scope, source: str,
                 ledger: Ledger) -> None:
        self.yaml_path, self.data, self.names, self.scope = yaml_path, data, names, scope
        self.source, self.ledger = source, ledger
        self.yaml_dir = yaml_path.parent
        self.base = self._base(data.get("path"))
        self.pose = data.get("kpt_shape") is not None
        self.items: List[Item] = []
        self.seen: Set[str] = set()
        self.label_files = 0
        self.tried: Dict[str, None] = {}
        self.missing: List[str] = []
        self.rows_before = len(ledger.rows)

    def _base(self, raw: Any) -> Path:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return self.yaml_dir
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise SourceError(f"{self.yaml_path}: 'path' must be a folder, not {_short(raw)}")
        p = Path(str(raw)).expanduser()
        p = p if p.is_absolute() else self.yaml_dir / p
        return p if _is_dir(p) else self.yaml_dir  # an absolute path from the author's machine

    def read(self) -> List[Item]:
        listed = set()
        for key in ("train", "val", "test"):
            entries = _entries(self.data, key, self.yaml_path)
            listed |= {SPLIT_NAMES[key]} if entries else set()
            for raw in entries:
                if not self._entry(raw, SPLIT_NAMES[key]):
                    self.missing.append(f"{key}: {raw}")
                    self._on_disk(SPLIT_NAMES[key])
        for split in ("train", "val", "test"):
            if split not in listed:
                self._on_disk(split)  # exports often omit `test:`
        self._check_found()
        return self.items

    def _bases(self) -> List[Path]:
        return list(dict.fromkeys([self.base, self.yaml_dir]))

    def _locate(self, raw: str, rel_to: Sequence[Path]) -> Optional[Path]:
        """A path as written (relative: under each of ``rel_to``), else by its tail: an absolute
        path from another machine by each shorter tail, a path climbing with ../ without the
        climb. A hit inside the dataset root wins over one outside it."""
        p = Path(raw).expanduser()
        if p.is_absolute():
            cands, tail, starts = [p], p.parts[1:], range(len(p.parts) - 1)
        else:
            lead = next((i for i, s in enumerate(p.parts) if s != ".."), len(p.parts))
            cands, tail, starts = [b / p for b in rel_to], p.parts, range(lead, lead + 1) if lead else range(0)
        cands += [b / Path(*tail[i:]) for i in starts if tail[i:] for b in rel_to]
        hits = [c for c in dict.fromkeys(cands) if c.exists()]
        inside = [c for c in hits if self.scope.admits(c)]
        return (inside or hits or [None])[0]

    def _entry(self, raw: str, split: str) -> bool:
        where = self._locate(raw, self._bases())
        if where is None:
            return False
        if _is_dir(where):
            self._folder(where, split)
        elif where.suffix.lower() in IMAGE_EXTS:
            self._image(where, split)
        else:
            self._list_file(where, split)
        return True

    def _on_disk(self, split: str) -> None:
        for b in self._bases():
            if not (_is_dir(b) and self.scope.admits(b)):
                continue
            for d in _subdirs(b):
                if SPLIT_NAMES.get(d.name.lower()) == split:
                    self._folder(d, split)  # Roboflow: <split>/images (+ <split>/labels), or labels beside
            for d in _subdirs(b / "images"):
                if SPLIT_NAMES.get(d.name.lower()) == split:
                    self._folder(d, split)  # Ultralytics: images/<split>

    def _folder(self, folder: Path, split: str) -> None:
        refused = self.scope.refusal(folder)
        if refused:
            self.ledger.add("file", str(folder), refused[0], f"split folder {refused[1]}; its files were not read")
            return
        images = _image_files(folder, self.scope, self.ledger)
        for img in images:
            self._image(img, split)
        self._cover_labels(images)
        self.ledger.cover(folder, self.yaml_path, self.scope, labels=True)  # labels may sit beside the images

    def _cover_labels(self, images: List[Path]) -> None:
        """Label folders apart from the images (labels/<split>/...): their unused .txt are label files
        without an image. Covered before the image folders, which may contain them (<split>/labels)."""
        mirrors = dict.fromkeys(c[0].parent for c in map(label_candidates, images) if len(c) == 2)
        for m in mirrors:
            if _is_dir(m) and self.scope.admits(m):
                self.ledger.cover(m, self.yaml_path, self.scope, labels=True)

    def _list_file(self, txt: Path, split: str) -> None:
        self.ledger.use(txt)
        refused = self.scope.refusal(txt)
        if refused:
            self.ledger.add("file", str(txt), refused[0], f"split list {refused[1]}; the images it lists were not read")
            return
        self.ledger.use(txt)
        try:
            lines = decode_text(txt.read_bytes(), errors="strict").splitlines()
        except (UnicodeDecodeError, OSError) as e:
            self.ledger.add("file", str(txt), "split list is not a text file of image paths",
                            f"{type(e).__name__}: {e}")
            return
        listed: List[Path] = []
        for n, line in enumerate(lines, 1):
            raw = line.strip()
            if not raw or raw.startswith("#"):
                continue
            rel = [txt.parent] if raw.startswith("./") else [txt.parent, *self._bases()]
            img = self._locate(raw, rel)
            if img is None or not _is_file(img):
                self.ledger.add("image", raw, "image file missing", f"listed in {txt}:{n}")
                continue
            self._image(img, split)
            listed.append(img)
        self._cover_labels(listed)
        for folder in dict.fromkeys(img.parent for img in listed):
            if self.scope.admits(folder):
                self.ledger.cover(folder, self.yaml_path, self.scope, labels=True)

    def _image(self, img: Path, split: str) -> None:
        key = _real(img) or str(img)
        if key in self.seen:
            return
        self.seen.add(key)
        self.ledger.use(img)
        refused = self.scope.refusal(img)
        if refused:
            self.ledger.add("image", str(img), refused[0], refused[1] + " (its labels were not read)")
            return
        item = Item(img, str(img), self.source, [], None, split=split)
        for txt in label_candidates(img):
            self.tried[str(txt.parent)] = None
            state, why = _probe(txt)
            if state == "absent":
                continue
            self.label_files += 1
            self.ledger.use(txt)
            # a label the reader cannot read is never taken for "no objects": the image is quarantined with it
            refused = self.scope.refusal(txt) if state == "file" else None
            if state == "error":
                self.ledger.add("image", str(img), "label file cannot be read",
                                f"{txt}: {why}; fix the permissions of the file or its folder")
                return
            if refused:
                self.ledger.add("image", str(img), f"label file: {refused[0]}", f"{txt}: {refused[1]}")
                return
            if not self._labels(item, txt):
                return
            break
        self.items.append(item)

    def _labels(self, item: Item, txt: Path) -> bool:
        """Read one label file into ``item``; False (the image quarantined) when it cannot be read."""
        self.label_files += 1
        self.ledger.use(txt)
        try:
            text = decode_text(txt.read_bytes())
        except OSError as e:
            self.ledger.add("image", str(item.path), "label file cannot be read",
                            f"{txt}: {e.strerror or type(e).__name__}; fix the permissions of the file or its folder")
            return False
        item.meta["normalized_boxes"] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            origin = f"{txt}:{n}"
            got = yolo_row(line.split(), self.names, self.pose)
            if isinstance(got, str):
                self.ledger.add("box", origin, got, line.strip()[:80], boxes=1)
            else:
                item.meta["normalized_boxes"].append((*got[:5], origin, got[5]))
        return True

    def _check_found(self) -> None:
        if self.missing:
            log.warning("  curate: %s lists image folders that do not exist: %s", self.yaml_path,
                        "; ".join(self.missing))
        if self.missing and not self.items and len(self.ledger.rows) == self.rows_before:
            raise SourceError(f"{self.yaml_path}: none of the listed image folders exist ({'; '.join(self.missing)}); "
                              f"paths are read relative to 'path' ({self.base}) or to the yaml's folder")
        if self.items and self.label_files == 0:
            tried = list(self.tried)
            more = f" and {len(tried) - 6} more" if len(tried) > 6 else ""
            raise SourceError(f"{self.yaml_path}: declares {len(self.names)} classes but no label file was found for "
                              f"any of its {len(self.items)} images; looked for <image name>.txt in "
                              f"{', '.join(tried[:6])}{more}. cvops reads these layouts: {YOLO_LAYOUTS}. Put the "
                              "labels where one of them expects, or use data=images for unlabelled images")


def yolo_row(parts: Sequence[str], names: Dict[int, str], pose: bool = False) -> Any:
    """(class name, cx, cy, w, h, segment or None) of one label line, or the reason it is not a box.

    ``class cx cy w h`` (a 6th value, a confidence, is ignored); with ``kpt_shape`` in the yaml
    the keypoints after the box are ignored; ``class x1 y1 x2 y2 x3 y3 ...`` (a segment) becomes
    its bounding box, as Ultralytics reads it for detection, and keeps its points (relative to the
    image) as the instance's polygon.
    """
    try:
        cls = float(parts[0])
        vals = [float(v) for v in parts[1:]]
    except (ValueError, IndexError):
        return "label line does not parse"
    if not cls.is_integer():
        return "label line does not parse"
    segment = None
    if len(vals) in (4, 5) or (pose and len(vals) >= 4):
        box = vals[:4]
    elif len(vals) >= 6 and len(vals) % 2 == 0:
        xs, ys = vals[0::2], vals[1::2]
        box = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
        segment = vals
    else:
        return "label line is not 'class cx cy w h'"
    if not all(math.isfinite(v) for v in box):
        return "label line has a non-finite value (NaN or infinity)"
    if int(cls) not in names:
        return "class index not in data.yaml names"
    return (names[int(cls)], *box, segment)


# --------------------------------------------------------------------- VOC
def read_voc(root: Path, source: str, ledger: Ledger, scope: Optional[Scope] = None) -> Tuple[List[Item], List[str]]:
    """Pascal VOC: ``Annotations/*.xml`` + ``JPEGImages/`` (splits from
    ``ImageSets/Main/<split>.txt`` when present), or xml files beside images.

    Box corners are taken as written (xmin, ymin, xmax, ymax in pixels).
    """
    scope = (scope or Scope()).plus(root)
    ann_dir = root / "Annotations" if _is_dir(root / "Annotations") else root
    xmls = [p for p in walk_files(ann_dir, scope, ledger) if p.suffix.lower() == ".xml" and not is_junk(p)]
    if not xmls:
        raise SourceError(f"data.path={root}: no VOC .xml annotations (expected Annotations/*.xml)")
    voc = _Voc(root, ann_dir, source, ledger, scope)
    for xml in xmls:
        voc.read(xml)
    ledger.cover(root, root, scope)
    return voc.items, voc.names


class _Voc:
    def __init__(self, root: Path, ann_dir: Path, source: str, ledger: Ledger, scope: Scope) -> None:
        self.source, self.ledger, self.scope = source, ledger, scope
        self.img_dirs = [d for d in (root / "JPEGImages", root / "images", ann_dir, root) if _is_dir(d)]
        self.split_of = self._sets(root / "ImageSets")
        self.items: List[Item] = []
        self.names: List[str] = []
        self.by_file: Dict[str, Tuple[Path, Item]] = {}

    def _sets(self, sets: Path) -> Dict[str, str]:
        """Image stem -> split from ImageSets/Main/{train,val,test}.txt (the other lists there are VOC's too)."""
        split_of: Dict[str, str] = {}
        if not _is_dir(sets) or not self.scope.admits(sets):
            return split_of
        for f in walk_files(sets, self.scope):
            if f.suffix.lower() == ".txt" and self.scope.admits(f):
                self.ledger.use(f)
        for name in ("train", "val", "test"):
            f = sets / "Main" / f"{name}.txt"
            if _is_file(f) and self.scope.admits(f):
                try:
                    stems = decode_text(f.read_bytes()).split()
                except OSError as e:  # its images still come in, split by the recipe
                    self.ledger.add("file", str(f), "split list cannot be read",
                                    f"{e.strerror}: its images get the recipe's split; fix its permissions")
                    continue
                for stem in stems:
                    split_of.setdefault(stem.strip(), name)
        return split_of

    def read(self, xml: Path) -> None:
        import xml.etree.ElementTree as ET

        self.ledger.use(xml)
        refused = self.scope.refusal(xml)
        if refused:
            self.ledger.add("label", str(xml), refused[0], refused[1])
            return
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            line, col = e.position
            self.ledger.add("label", str(xml), "label file does not parse", f"line {line}, column {col}: {e}")
            return
        except (ValueError, LookupError, OSError, RecursionError) as e:
            self.ledger.add("label", str(xml), "label file does not parse", f"{type(e).__name__}: {e}")
            return
        fname = (tree.findtext("filename") or "").strip() or f"{xml.stem}.jpg"
        objects = tree.findall("object")
        by_name, own = self._images(fname, xml)
        img = by_name or own
        named = re.split(r"[\\/]", fname)[-1].rsplit(".", 1)[0]
        if by_name is not None and own is not None and named != xml.stem and _real(by_name) != _real(own):
            # a stale <filename> (images renamed after labelling, an xml copied as a template) or a misnamed
            # xml: these boxes may belong to either image, so neither gets them
            self.ledger.add("label", str(xml), "<filename> names another existing image",
                            f"<filename>{fname}</filename> is {img}, but {own.name} (the xml's own name) exists too; "
                            "correct <filename> or rename the xml", boxes=len(objects))
            return
        if img is None:
            self.ledger.add("label", str(xml), "label file without an image", f"filename={fname}", boxes=len(objects))
            return
        self.ledger.use(img)
        refused = self.scope.refusal(img)
        if refused:
            self.ledger.add("image", str(img), refused[0], f"<filename> in {xml}: {refused[1]}", boxes=len(objects))
            return
        size = tree.find("size")
        w, h = (None, None) if size is None else (size.findtext("width"), size.findtext("height"))
        ok, declared = _declared_size(w, h)
        if not ok:
            self.ledger.add("image", str(img), "malformed <size> in the annotation",
                            f"{xml}: width={w!r} height={h!r}; write pixels or remove <size>", boxes=len(objects))
            return
        item = Item(img, str(img), self.source, [], declared, split=self.split_of.get(xml.stem) or _split_of(img))
        for k, obj in enumerate(objects, 1):
            self._object(item, obj, f"{xml}#object-{k}")
        self._keep(item, xml)

    def _images(self, fname: str, xml: Path) -> Tuple[Optional[Path], Optional[Path]]:
        """(the first existing <filename> in the image folders, the first existing image named like the xml):
        <filename> tags are often stale, so the xml's own name is the fallback, and the check when they differ."""
        by_name = next((c for d in self.img_dirs if _is_file(c := d / fname)), None)
        own = next((c for d in self.img_dirs for ext in sorted(IMAGE_EXTS) if _is_file(c := d / f"{xml.stem}{ext}")),
                   None)
        return by_name, own

    def _object(self, item: Item, obj: Any, origin: str) -> None:
        label = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        vals = [_num(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] if bb is not None else [None]
        if any(v is None for v in vals):
            self.ledger.add("box", origin, "object without a numeric bndbox", label, boxes=1)
        elif not all(math.isfinite(v) for v in vals):  # type: ignore[arg-type]
            self.ledger.add("box", origin, "bndbox has a non-finite value (NaN or infinity)", label, boxes=1)
        elif not label:
            self.ledger.add("box", origin, "object without a <name>", "", boxes=1)
        else:
            x0, y0, x1, y1 = vals  # type: ignore[misc]
            if label not in self.names:
                self.names.append(label)
            item.boxes.append(Box(label, x0, y0, x1 - x0, y1 - y0, origin))  # type: ignore[union-attr,operator]

    def _keep(self, item: Item, xml: Path) -> None:
        key = _real(item.path) or item.ref
        if key in self.by_file:
            first_xml, first = self.by_file[key]
            first.boxes += item.boxes or []  # type: ignore[operator]
            self.ledger.add("label", item.ref, "image annotated by two xml files",
                            f"{xml} and {first_xml}: one sample with the boxes of both")
            return
        self.by_file[key] = (xml, item)
        self.items.append(item)


# ---------------------------------------------------------------- archives
def is_archive(path: Path) -> bool:
    return _is_file(path) and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path, max_mb: float, max_members: int = 200_000,
            ledger: Optional[Ledger] = None) -> Path:
    """Extract safely: no absolute paths, no ``..`` (the archive is refused), no links or devices
    (rows, not extracted), and at most ``max_mb`` megabytes written (counted while writing, not
    trusted from headers). A corrupt, encrypted or unreadable zip member is a row naming it (with
    ``ledger``; without one, a :class:`SourceError`) and the other members are extracted; a tar
    that cannot be read further raises a :class:`SourceError` naming the last member read."""
    import tarfile
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    x = _Extraction(archive, dest.resolve(), max_mb, ledger)
    try:
        kind = "zip" if zipfile.is_zipfile(archive) else "tar" if tarfile.is_tarfile(archive) else None
    except (OSError, EOFError, ValueError):
        kind = None
    if kind is None:
        raise SourceError(f"{archive}: cannot be read as a zip or tar archive (truncated, corrupt or another format "
                          "such as 7z/rar); re-download it, or extract it yourself and point data.path at the folder")
    if kind == "zip":
        x.zip(max_members)
    else:
        x.tar(max_members)
    return x.root


class _Extraction:
    def __init__(self, archive: Path, root: Path, max_mb: float, ledger: Optional[Ledger]) -> None:
        self.archive, self.root, self.max_mb, self.ledger = archive, root, max_mb, ledger
        self.budget = int(max_mb * 1024 * 1024)
        self.written: Set[str] = set()

    def target(self, name: str) -> Path:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or not name.strip("/"):
            raise SourceError(f"{self.archive}: member '{name}' would extract outside the folder; archive refused")
        out = (self.root / p).resolve()
        if self.root not in out.parents and out != self.root:
            raise SourceError(f"{self.archive}: member '{name}' escapes the extraction folder; archive refused")
        return out

    def skip(self, name: str, reason: str, detail: str) -> None:
        if self.ledger is None:
            raise SourceError(f"{self.archive}: member '{name}': {reason} ({detail})")
        self.ledger.add("file", f"{self.archive}!{name}", reason, detail)

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise SourceError(f"{self.archive}: more than curate.max_archive_mb={self.max_mb:g} MB uncompressed; "
                              "raise the limit if this archive is expected to be that large")

    def copy(self, name: str, src: Any, out: Path) -> None:
        """Write one member; a file that cannot be created is a row, a read error propagates."""
        if str(out) in self.written:
            self.skip(name, "archive member listed twice", "the first copy was kept")
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            f = open(out, "wb")
        except OSError as e:
            self.skip(name, "archive member cannot be extracted", f"{type(e).__name__}: {e.strerror}")
            return
        self.written.add(str(out))
        with f:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                self.spend(len(chunk))
                f.write(chunk)

    def mkdir(self, name: str, out: Path) -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.skip(name, "archive member cannot be extracted", f"{type(e).__name__}: {e.strerror}")

    def zip(self, max_members: int) -> None:
        import zipfile

        try:
            z = zipfile.ZipFile(self.archive)
        # NotImplementedError is zipfile's answer to an unsupported compression method (a member it cannot read)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise SourceError(f"{self.archive}: the zip directory cannot be read ({type(e).__name__}: {e}); "
                              "re-create or re-download the archive") from e
        with z:
            members = z.infolist()
            if len(members) > max_members:
                raise SourceError(f"{self.archive}: {len(members)} members, more than {max_members}")
            for m in members:
                self.zip_member(z, m)

    def zip_member(self, z: Any, m: Any) -> None:
        import lzma
        import zipfile
        import zlib

        name = zip_name(m)
        out = self.target(name)
        if m.is_dir():
            self.mkdir(name, out)
        elif (m.external_attr >> 16) & 0o170000 == 0o120000:
            self.skip(name, "link inside an archive (not extracted)", "archives may hold only files and folders")
        elif m.flag_bits & 0x1:
            self.skip(name, "encrypted archive member (not extracted)",
                      "cvops reads no passwords: re-create the archive without one")
        else:
            try:
                with z.open(m) as src:
                    self.copy(name, src, out)
            except SourceError:
                raise
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
                    NotImplementedError, ValueError) as e:
                if str(out) in self.written:
                    self.written.discard(str(out))
                    out.unlink(missing_ok=True)
                self.skip(name, "archive member is corrupt or cannot be extracted", f"{type(e).__name__}: {e}")

    def tar(self, max_members: int) -> None:
        import lzma
        import tarfile
        import zlib

        last = None
        try:
            with tarfile.open(self.archive) as t:
                for n, m in enumerate(t):
                    if n >= max_members:
                        raise SourceError(f"{self.archive}: more than {max_members} members")
                    last = m.name
                    self.tar_member(t, m)
                self.tar_end(t, last)
        except SourceError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
            where = f"at or after member '{last}'" if last else "from its start"
            raise SourceError(f"{self.archive}: reading stopped {where} ({type(e).__name__}: {e}); the archive is "
                              "truncated or corrupt and the members after it cannot be read: re-create or "
                              "re-download it") from e

    def tar_member(self, t: Any, m: Any) -> None:
        out = self.target(m.name)
        if m.isdir():
            self.mkdir(m.name, out)
        elif not m.isfile():
            self.skip(m.name, "link or special file inside an archive (not extracted)",
                      "archives may hold only files and folders")
        else:
            self.copy(m.name, t.extractfile(m), out)

    def tar_end(self, t: Any, last: Optional[str]) -> None:
        """Iteration stops quietly at a corrupt header: what follows the last member must be the end marker."""
        t.fileobj.seek(t.offset)
        zeros = 0
        while True:
            chunk = t.fileobj.read(1 << 16)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                raise SourceError(f"{self.archive}: the data after member '{last}' cannot be read as tar members "
                                  "(a corrupt header); the members after it are lost: re-create or re-download it")
            zeros += len(chunk)
            self.spend(len(chunk))
        if zeros == 0 and last is not None:
            self.skip(last, "tar archive has no end marker (it may be truncated)",
                      f"the last member read was '{last}'; compare the archive with its source")


def find_in(root: Path, patterns: Sequence[str], what: str) -> Path:
    """The one file matching ``patterns`` inside an extracted archive (the shallowest)."""
    hits = sorted({p for pat in patterns for p in root.rglob(pat) if not is_junk(p.relative_to(root))},
                  key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise SourceError(f"archive extracted to {root} has no {what} ({', '.join(patterns)})")
    return hits[0]


# ------------------------------------------------------------ images/video
def read_images(root: Path, source: str, ledger: Optional[Ledger] = None,
                scope: Optional[Scope] = None) -> List[Item]:
    """Every image file under ``root`` (or ``root`` itself, a file), unlabelled."""
    ledger = ledger if ledger is not None else Ledger()
    folder = _is_dir(root)
    scope = (scope or Scope()).plus(root if folder else root.parent)
    files = _image_files(root, scope, ledger) if folder else [root]
    if folder:
        ledger.cover(root, root, scope)
    items = []
    for p in files:
        ledger.use(p)
        refused = scope.refusal(p)
        if refused:
            ledger.add("image", str(p), *refused)
            continue
        items.append(Item(p, str(p), source, None, split=_split_of(p.relative_to(root)) if folder else None))
    return items


def video_files(root: Path, scope: Optional[Scope] = None, ledger: Optional[Ledger] = None) -> List[Path]:
    if not _is_dir(root):
        return [root]
    scope = (scope or Scope()).plus(root)
    if ledger is not None:
        ledger.cover(root, root, scope)
    found = [p for p in walk_files(root, scope, ledger) if p.suffix.lower() in VIDEO_EXTS and not is_junk(p)]
    out = []
    for p in found:
        refused = scope.refusal(p)
        if refused and ledger is not None:
            ledger.add("video", str(p), *refused)
        elif not refused:
            out.append(p)
    return out


def read_video(path: Path, source: str, ledger: Ledger, fps: Optional[float], every_n: Optional[int],
               max_frames: Optional[int], labels: Optional[Dict[int, Item]] = None) -> List[Item]:
    """Frame items sampled from one video (decoded later, by index)."""
    import cv2

    ledger.use(path)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            ledger.add("video", str(path), "the decoder cannot open this video")
            return []
        native = cap.get(cv2.CAP_PROP_FPS) or 0.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if native <= 0 or total <= 0:
        ledger.add("video", str(path), "video reports no frame rate or no frames")
        return []
    step = every_n if every_n else max(1, round(native / fps)) if fps else 1
    items = []
    for f in range(0, total, step):
        if max_frames and len(items) >= max_frames:
            break
        labelled = labels.get(f) if labels else None
        item = Item(path, f"{path}#{f}", source, labelled.boxes if labelled else None,
                    labelled.declared_size if labelled else None, group=str(path),
                    meta={"video": str(path), "frame_index": f, "timestamp": round(f / native, 6)})
        items.append(item)
    return items


# ------------------------------------------------------------ one source
def read_source(index: int, src: Dict[str, Any], workdir: Path, ledger: Ledger,
                max_archive_mb: float = 4096) -> Tuple[List[Item], List[str]]:
    """Items of one configured source (``iter_sources`` entry) and the class names it declares.

    An archive is extracted into ``workdir/source/archive-<index>`` first; that folder is then
    the dataset root and every file in it is accounted for.

    Raises:
        SourceError: the path is missing, the format unknown, the source unreadable, or every
            image it names lies outside the dataset root.
    """
    _real_dir.cache_clear()  # links may have changed since the last source was read
    fmt = src.get("format")
    path = Path(str(src["path"])).expanduser() if src.get("path") else None
    if fmt != "synthetic":
        if path is None:
            raise SourceError(f"data.path is required for format '{fmt}'")
        if not path.exists():
            raise SourceError(f"data.path={path} does not exist (format {fmt}); check the path or mount")
    scope = Scope(allow_outside=bool(src.get("allow_outside_paths")))
    archive = None
    if path is not None and is_archive(path):
        archive = path
        root = extract(path, workdir / "source" / f"archive-{index}", float(max_archive_mb), ledger=ledger)
        scope = scope.plus(root)
        path = {"coco": lambda: find_in(root, ["*.json"], "COCO .json file"),
                "yolo": lambda: find_in(root, ["data.yaml", "*.yaml"], "YOLO data.yaml")}.get(fmt, lambda: root)()
    n_rows = len(ledger.rows)
    items, names = _read_format(fmt, path, src, index, workdir, ledger, scope)
    if archive is not None:
        ledger.cover(root, archive, scope)
    outside = [r for r in ledger.rows[n_rows:] if r["reason"] == OUTSIDE]
    if not items and outside:
        raise SourceError(f"{path}: every image this source names is outside the dataset root ({len(outside)} "
                          f"quarantined), e.g. {outside[0]['detail']}; point data.path at the dataset's own folder "
                          "or set data.images_root")
    return items, names


def _read_format(fmt: Any, path: Optional[Path], src: Dict[str, Any], index: int, workdir: Path, ledger: Ledger,
                 scope: Scope) -> Tuple[List[Item], List[str]]:
    if fmt == "synthetic":
        from cvops.synthetic import generate, spec_from_config

        out = workdir / "source" / f"synthetic-{index}"
        summary = generate(out, spec_from_config(src["synthetic"]))
        ledger.use(out / "synthetic.json")
        items, _ = read_coco(Path(summary["annotations"]), out, "synthetic", ledger, scope=scope)
        for v in summary["videos"]:
            frames = {it.meta["frame_index"]: it for it in
                      read_coco(Path(v["labels"]), out, "synthetic", ledger, scope=scope)[0]}
            items += read_video(Path(v["video"]), "synthetic", ledger, src.get("fps"), src.get("every_n"),
                                src.get("max_frames"), labels=frames)
        return items, list(src["synthetic"]["classes"])
    assert path is not None
    if fmt == "coco":
        root = Path(str(src["images_root"])).expanduser() if src.get("images_root") else None
        return read_coco(path, root, "coco", ledger, scope=scope)
    if fmt == "yolo":
        return read_yolo(path, "yolo", ledger, scope=scope)
    if fmt == "voc":
        return read_voc(path, "voc", ledger, scope=scope)
    if fmt == "images":
        return read_images(path, "images", ledger, scope=scope), []
    if fmt == "video":
        vids = video_files(path, scope, ledger)
        if not vids:
            raise SourceError(f"data.path={path}: no video files (.mp4 .mkv .avi .mov .webm)")
        items = []
        for v in vids:
            items += read_video(v, "video", ledger, src.get("fps"), src.get("every_n"), src.get("max_frames"))
        return items, []
    raise SourceError(f"data.format='{fmt}' is not a source format; use synthetic, coco, voc, yolo, images or video")


# ------------------------------------------------------- every file counted
def account_files(ledger: Ledger) -> None:
    """Give every file under the covered folders that no reader used a row with its reason."""
    for cover in ledger.covers:
        for f in walk_files(cover.folder, cover.scope, ledger):
            key = _real(f)
            if key is None or key in ledger.used:
                continue
            ledger.used.add(key)
            kind, reason, detail, boxes = _classify(f, cover)
            ledger.add(kind, str(f), reason, detail, boxes)
    ledger.covers.clear()


def zip_name(m: Any) -> str:
    """A zip member's name. Without the UTF-8 flag the format says CP437, but most zippers (macOS Finder,
    Windows Explorer, Java) write UTF-8 there anyway: a name whose bytes are valid UTF-8 is read as UTF-8,
    so ``café.png`` is not extracted as ``caf├⌐.png`` (and then missing)."""
    if m.flag_bits & 0x800 or m.filename.isascii():
        return m.filename
    try:
        return m.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):  # a real CP437 name
        return m.filename


def _classify(f: Path, cover: _Cover) -> Tuple[str, str, str, int]:
    """(kind, reason, detail, boxes) of a file no reader used."""
    ext = f.suffix.lower()
    if is_junk(f):
        return "file", "OS metadata file (not data)", "written by a file manager (__MACOSX/, ._*, .DS_Store, " \
                                                      "Thumbs.db); safe to delete", 0
    if not _is_file(f):
        return "file", "not a regular file", "a link to nothing, a pipe or a device", 0
    if not cover.scope.admits(f):
        return "file", OUTSIDE, f"a link to {_real(f)} (not read); set data.allow_outside_paths=true to read it", 0
    if f.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "file", "nested archive (not extracted)", "list it as its own entry in data.sources", 0
    if cover.labels and ext == ".txt":
        try:
            lines = [line.split() for line in decode_text(f.read_bytes()).splitlines() if line.strip()]
        except OSError as e:
            return "label", "label file without an image", f"cannot be read ({e.strerror}): its boxes are not counted", 0
        rows = sum(1 for parts in lines if len(parts) >= 5 and all(_num(v) is not None for v in parts[:5]))
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
