"""Readers: every source format -> a list of :class:`Item` (one per image).

Readers only parse; they never drop anything silently. What they cannot use
(a label file that does not parse, a label whose image is missing, a video the
decoder cannot open) goes to the :class:`Ledger` with its reason, and the
counts in the curate report add up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


class SourceError(ValueError):
    """A source that cannot be read at all (missing path, unknown format, empty)."""


@dataclass
class Box:
    """One labelled box in absolute pixels (top-left x, y, width, height)."""

    label: str
    x: float
    y: float
    w: float
    h: float
    origin: str  # file:line (or file#annotation-id) it came from


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


@dataclass
class Ledger:
    """Every rejected file, label or box, with its reason."""

    rows: List[Dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, ref: str, reason: str, detail: str = "", boxes: int = 0) -> None:
        self.rows.append({"kind": kind, "file": ref, "reason": reason, "detail": detail, "boxes": boxes})

    def count(self, kind: str) -> int:
        return sum(1 for r in self.rows if r["kind"] == kind)

    def boxes(self) -> int:
        return sum(r["boxes"] for r in self.rows)


def _split_of(path: Path) -> Optional[str]:
    for part in reversed(path.parts[:-1]):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


# -------------------------------------------------------------------- COCO
def read_coco(json_path: Path, images_root: Optional[Path], source: str, ledger: Ledger,
              group_field: str = "video") -> List[Item]:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{json_path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise SourceError(f"{json_path}: not a COCO detection file (no '{key}' list)")
    root = images_root or json_path.parent
    cats = {c["id"]: c["name"] for c in data["categories"]}
    items: Dict[int, Item] = {}
    for im in data["images"]:
        name = im["file_name"]
        frame = im.get("frame_index")
        video = im.get(group_field)
        if video is not None and frame is not None:  # a frame of a labelled video (cvops synthetic)
            path = (root / video)
            item = Item(path, f"{video}#{frame}", source, [], (im.get("width"), im.get("height")),
                        group=str(video), meta={"video": str(root / video), "frame_index": int(frame),
                                                "timestamp": im.get("timestamp")})
        else:
            path = _coco_image(name, root, json_path, images_root is not None)
            item = Item(path, str(path), source, [], (im.get("width"), im.get("height")), split=_split_of(Path(name)))
        if item.declared_size == (None, None):
            item.declared_size = None
        items[im["id"]] = item
    for a in data["annotations"]:
        origin = f"{json_path}#annotation-{a.get('id')}"
        item = items.get(a.get("image_id"))
        if item is None:
            ledger.add("label", origin, "annotation for an image id that is not in 'images'",
                       f"image_id={a.get('image_id')}", boxes=1)
            continue
        if a.get("category_id") not in cats:
            ledger.add("box", origin, "unknown category_id", f"category_id={a.get('category_id')}", boxes=1)
            continue
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            ledger.add("box", origin, "bbox is not [x, y, w, h]", str(a.get("bbox")), boxes=1)
            continue
        item.boxes.append(Box(cats[a["category_id"]], x, y, w, h, origin))
    return list(items.values())


def _coco_image(name: str, root: Path, json_path: Path, explicit_root: bool) -> Path:
    """Image path for a COCO file_name: under images_root if given, else beside the
    json, in images/ beside it, or in images/ one level up (annotations/ + images/)."""
    if explicit_root or Path(name).is_absolute():
        return root / name
    here = json_path.parent
    for cand in (here / name, here / "images" / name, here.parent / "images" / name):
        if cand.is_file():
            return cand
    return here / name


# -------------------------------------------------------------------- YOLO
def read_yolo(yaml_path: Path, source: str, ledger: Ledger) -> Tuple[List[Item], List[str]]:
    import yaml

    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SourceError(f"{yaml_path}: YAML does not parse: {e}") from e
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        raise SourceError(f"{yaml_path}: no 'names' list of classes")
    base = Path(data["path"]) if data.get("path") else yaml_path.parent
    if not base.is_absolute():
        base = yaml_path.parent / base
    if not base.exists():  # an absolute path from the author's machine
        base = yaml_path.parent
    items: List[Item] = []
    seen_dirs = set()
    for split_key in ("train", "val", "test"):
        for entry in _as_list(data.get(split_key)):
            img_dir = _resolve_yolo_dir(entry, base, yaml_path.parent, split_key)
            if img_dir is None or img_dir in seen_dirs:
                continue
            seen_dirs.add(img_dir)
            items += _read_yolo_dir(img_dir, names, SPLIT_NAMES.get(split_key, split_key), source, ledger)
    # splits on disk that data.yaml does not list (exports often omit `test:`)
    for split_dir in sorted(p for p in yaml_path.parent.iterdir() if p.is_dir()):
        img_dir = (split_dir / "images").resolve()
        if img_dir.is_dir() and img_dir not in seen_dirs:
            seen_dirs.add(img_dir)
            items += _read_yolo_dir(img_dir, names, SPLIT_NAMES.get(split_dir.name.lower()), source, ledger)
    return items, list(names)


def _as_list(v: Any) -> List[str]:
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _resolve_yolo_dir(entry: str, base: Path, yaml_dir: Path, split_key: str) -> Optional[Path]:
    """An image dir from data.yaml: as written, under `path`, or (foreign absolute) by its tail."""
    p = Path(entry)
    candidates = [p] if p.is_absolute() else [base / p, yaml_dir / p]
    if p.is_absolute():  # /home/author/dataset/train/images -> <yaml dir>/train/images
        parts = p.parts
        for i in range(1, len(parts)):
            candidates.append(yaml_dir / Path(*parts[i:]))
    candidates.append(yaml_dir / ("valid" if split_key == "val" else split_key) / "images")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def _read_yolo_dir(img_dir: Path, names: List[str], split: Optional[str], source: str, ledger: Ledger) -> List[Item]:
    label_dir = img_dir.parent / "labels" if img_dir.name == "images" else img_dir
    items = []
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    for stem, img in images.items():
        item = Item(img, str(img), source, [], None, split=split)
        txt = label_dir / f"{stem}.txt"
        if txt.is_file():
            item.boxes, item.meta["normalized_boxes"] = [], []
            for n, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                origin = f"{txt}:{n}"
                parts = line.split()
                try:
                    cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                except (ValueError, IndexError):
                    ledger.add("box", origin, "label line does not parse", line.strip()[:80], boxes=1)
                    continue
                if len(parts) > 5 and len(parts) != 6:  # polygon / keypoints: not a box row
                    ledger.add("box", origin, "label line is not 'class cx cy w h'", line.strip()[:80], boxes=1)
                    continue
                if not 0 <= cls < len(names):
                    ledger.add("box", origin, "class index not in data.yaml names", f"class={cls}", boxes=1)
                    continue
                item.meta["normalized_boxes"].append((names[cls], cx, cy, w, h, origin))
        items.append(item)
    if label_dir.is_dir() and label_dir != img_dir:
        for txt in sorted(label_dir.glob("*.txt")):
            if txt.stem not in images:
                rows = sum(1 for line in txt.read_text(errors="replace").splitlines() if line.strip())
                ledger.add("label", str(txt), "label file without an image", f"{rows} box row(s)", boxes=rows)
    return items


# --------------------------------------------------------------------- VOC
def read_voc(root: Path, source: str, ledger: Ledger) -> Tuple[List[Item], List[str]]:
    """Pascal VOC: ``Annotations/*.xml`` + ``JPEGImages/`` (splits from
    ``ImageSets/Main/<split>.txt`` when present), or xml files beside images.

    Box corners are taken as written (xmin, ymin, xmax, ymax in pixels).
    """
    import xml.etree.ElementTree as ET

    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    img_dirs = [d for d in (root / "JPEGImages", root / "images", ann_dir, root) if d.is_dir()]
    split_of: Dict[str, str] = {}
    sets = root / "ImageSets" / "Main"
    for name in ("train", "val", "test", "trainval"):
        f = sets / f"{name}.txt"
        if f.is_file() and name != "trainval":
            for line in f.read_text().split():
                split_of.setdefault(line.strip(), name)
    items: List[Item] = []
    names: List[str] = []
    xmls = sorted(ann_dir.rglob("*.xml"))
    if not xmls:
        raise SourceError(f"data.path={root}: no VOC .xml annotations (expected Annotations/*.xml)")
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            line, col = e.position
            ledger.add("label", str(xml), "label file does not parse", f"line {line}, column {col}: {e}")
            continue
        fname = (tree.findtext("filename") or f"{xml.stem}.jpg").strip()
        img = next((d / fname for d in img_dirs if (d / fname).is_file()), None)
        if img is None:  # filename tags are often stale: try the xml's stem with image extensions
            img = next((d / f"{xml.stem}{ext}" for d in img_dirs for ext in IMAGE_EXTS
                        if (d / f"{xml.stem}{ext}").is_file()), None)
        objects = tree.findall("object")
        if img is None:
            ledger.add("label", str(xml), "label file without an image", f"filename={fname}", boxes=len(objects))
            continue
        size = tree.find("size")
        declared = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            declared = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
            if declared == (0, 0):
                declared = None
        item = Item(img, str(img), source, [], declared, split=split_of.get(xml.stem) or _split_of(img))
        for k, obj in enumerate(objects, 1):
            origin = f"{xml}#object-{k}"
            label = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            try:
                x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
            except (AttributeError, TypeError, ValueError):
                ledger.add("box", origin, "object without a numeric bndbox", label, boxes=1)
                continue
            if label not in names:
                names.append(label)
            item.boxes.append(Box(label, x0, y0, x1 - x0, y1 - y0, origin))  # type: ignore[union-attr]
        items.append(item)
    return items, names


# ---------------------------------------------------------------- archives
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def extract(archive: Path, dest: Path, max_mb: float, max_members: int = 200_000) -> Path:
    """Extract safely: no absolute paths, no ``..``, no links or devices, and at most
    ``max_mb`` megabytes written (counted while writing, not trusted from headers)."""
    import tarfile
    import zipfile

    budget = int(max_mb * 1024 * 1024)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def target(name: str) -> Path:
        p = Path(name)
        if p.is_absolute() or ".." in p.parts or not name.strip("/"):
            raise SourceError(f"{archive}: member '{name}' would extract outside the folder; archive refused")
        out = (root / p).resolve()
        if root not in out.parents and out != root:
            raise SourceError(f"{archive}: member '{name}' escapes the extraction folder; archive refused")
        return out

    def copy(src: Any, out: Path) -> None:
        nonlocal budget
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                budget -= len(chunk)
                if budget < 0:
                    raise SourceError(f"{archive}: more than curate.max_archive_mb={max_mb:g} MB uncompressed; "
                                      "raise the limit if this archive is expected to be that large")
                f.write(chunk)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            if len(members) > max_members:
                raise SourceError(f"{archive}: {len(members)} members, more than {max_members}")
            for m in members:
                out = target(m.filename)
                if m.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                if (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SourceError(f"{archive}: member '{m.filename}' is a symbolic link; archive refused")
                with z.open(m) as src:
                    copy(src, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for n, m in enumerate(t):
                if n >= max_members:
                    raise SourceError(f"{archive}: more than {max_members} members")
                out = target(m.name)
                if m.isdir():
                    out.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    src = t.extractfile(m)
                    if src is not None:
                        copy(src, out)
                else:
                    raise SourceError(f"{archive}: member '{m.name}' is a link or device; archive refused")
    else:
        raise SourceError(f"{archive}: not a zip or tar archive")
    return root


def find_in(root: Path, patterns: Sequence[str], what: str) -> Path:
    """The one file matching ``patterns`` inside an extracted archive."""
    hits = sorted({p for pat in patterns for p in root.rglob(pat)}, key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise SourceError(f"archive extracted to {root} has no {what} ({', '.join(patterns)})")
    return hits[0]


# ------------------------------------------------------------ images/video
def read_images(root: Path, source: str) -> List[Item]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return [Item(p, str(p), source, None, split=_split_of(p.relative_to(root)) if root.is_dir() else None)
            for p in files]


def video_files(root: Path) -> List[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS)


def read_video(path: Path, source: str, ledger: Ledger, fps: Optional[float], every_n: Optional[int],
               max_frames: Optional[int], labels: Optional[Dict[int, Item]] = None) -> List[Item]:
    """Frame items sampled from one video (decoded later, by index)."""
    import cv2

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


def iter_sources(data: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    """The configured sources, in order: ``data.sources`` entries (``data=sources``), else
    ``data`` itself; then each ``data.extra`` entry (e.g. reviewed edge cases from
    ``cvops review``), which is added to whatever the main source is.

    Entries of ``sources`` and ``extra`` inherit the other ``data`` keys (``classes``,
    ``class_map``, ``fps``, ...) and override them with their own.

    Raises:
        SourceError: an entry without ``format`` (or an ``extra`` entry without ``path``),
            or ``sources`` set without ``data=sources``.
    """
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
