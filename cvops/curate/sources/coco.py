"""COCO detection files: ``images``, ``annotations`` and ``categories`` -> items, every bad entry a row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from cvops.curate.sources.fields import id_key, label_name, num, parse_size, read_text, short
from cvops.curate.sources.items import Box, Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import Scope, is_dir, is_file, real_path, split_of
from cvops.errors import SourceError


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
    text = read_text(json_path, "the COCO file")
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
        key = id_key(c.get("id")) if isinstance(c, dict) else None
        name = label_name(c.get("name")) if isinstance(c, dict) else None
        if key is None or name is None:
            ledger.add("label", where, "category entry without an 'id' and a 'name'",
                       f"{short(c)}; its annotations are counted as 'unknown category_id'")
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
            self.ledger.add("image", where, "image entry is not an object", short(im))
            return
        key = id_key(im.get("id"))
        got = self._item(im)
        ref = got.ref if isinstance(got, Item) else where
        if key is None:
            self.ledger.add("image", ref, "image entry without a usable 'id'",
                            f"{where}: id={short(im.get('id'))}; give every image a unique id")
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
        same_key = item.ref if "frame_index" in item.meta else (real_path(item.path) or item.ref)
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
        ok, declared = parse_size(im.get("width"), im.get("height"))
        video, frame = im.get(self.group_field), im.get("frame_index")
        if video is not None and frame is not None:  # a frame of a labelled video (cvops synthetic)
            if not isinstance(video, str) or not video or isinstance(frame, bool) or not isinstance(frame, int) \
                    or frame < 0:
                return ("video frame entry without a usable 'video' and 'frame_index'",
                        f"video={short(video)} frame_index={short(frame)}", "", None)
            path = self.root / video
            item = Item(path, f"{video}#{frame}", self.source, [], declared, group=str(video),
                        meta={"video": str(path), "frame_index": frame, "timestamp": im.get("timestamp")})
        else:
            name = im.get("file_name")
            if not isinstance(name, str) or not name.strip() or "\x00" in name:
                return "image entry without a usable 'file_name'", f"file_name={short(name)}", "", None
            path = self._locate(name)
            item = Item(path, str(path), self.source, [], declared, split=split_of(Path(name)))
        refused = self.scope.refusal(item.path)
        if refused:
            return refused[0], refused[1], item.ref, item.path
        if not ok:
            return ("image entry has a malformed 'width'/'height'",
                    f"width={short(im.get('width'))} height={short(im.get('height'))}; "
                    "write positive integers (pixels) or remove both", item.ref, item.path)
        return item

    def _locate(self, name: str) -> Path:
        if self.images_root is not None or Path(name).is_absolute():
            return next((self.root / v for v in _spellings(name) if is_file(self.root / v)), self.root / name)
        here = self.json_path.parent
        hits = [(b, b / v) for b in (here, here / "images", here.parent / "images") for v in _spellings(name)
                if is_file(b / v)]
        inside = [h for h in hits if self.scope.admits(h[1])]
        if inside:
            self.bases.add(inside[0][0])
        return (inside or hits or [(here, here / name)])[0][1]

    def annotate(self, k: int, a: Any, cats: Dict[Any, str]) -> None:
        if not isinstance(a, dict):
            self.ledger.add("box", f"{self.json_path}#annotations[{k}]", "annotation is not an object", short(a),
                            boxes=1)
            return
        origin = f"{self.json_path}#annotation-{short(a['id'], 40)}" if "id" in a else \
            f"{self.json_path}#annotations[{k}]"
        key = id_key(a.get("image_id"))
        if key in self.rejected:
            self.rejected[key]["boxes"] += 1
            return
        item = self.by_id.get(key)
        if item is None:
            self.ledger.add("label", origin, "annotation for an image id that is not in 'images'",
                            f"image_id={short(a.get('image_id'))}", boxes=1)
            return
        cat = id_key(a.get("category_id"))
        if cat not in cats:
            self.ledger.add("box", origin, "unknown category_id", f"category_id={short(a.get('category_id'))}",
                            boxes=1)
            return
        bbox, why = _coco_bbox(a.get("bbox"))
        if bbox is None:
            self.ledger.add("box", origin, why, short(a.get("bbox")), boxes=1)
            return
        item.boxes.append(Box(cats[cat], *bbox, origin, segmentation=a.get("segmentation") or None))  # type: ignore[union-attr]

    def cover(self) -> None:
        folders = [self.images_root] if self.images_root is not None else sorted(self.bases)
        for f in folders:
            if is_dir(f) and self.scope.admits(f):
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
    nums = [num(x) for x in v]
    if any(n is None for n in nums):
        return None, "bbox is not [x, y, w, h]"
    if not all(math.isfinite(n) for n in nums):  # type: ignore[arg-type]
        return None, "bbox has a non-finite value (NaN or infinity)"
    return (nums[0], nums[1], nums[2], nums[3]), ""  # type: ignore[return-value]
