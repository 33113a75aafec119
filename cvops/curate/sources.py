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
from typing import Any, Dict, Iterable, List, Optional, Tuple

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
    """The configured sources: ``data.sources`` entries, else ``data`` itself."""
    if data.get("sources"):
        for i, s in enumerate(data["sources"]):
            if "format" not in s:
                raise SourceError(f"data.sources[{i}] has no 'format' (one of coco, yolo, images, video, synthetic)")
            yield {**{k: v for k, v in data.items() if k != "sources"}, **s}
    else:
        yield data
