"""YOLO datasets: a ``data.yaml``, its split folders or lists, and a label ``.txt`` per image (any common layout)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from cvops.curate.sources.fields import decode_text, id_key, label_name, read_text, short
from cvops.curate.sources.items import Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import SPLIT_NAMES, Scope, image_files, is_dir, is_file, probe, real_path, subdirs
from cvops.errors import SourceError
from cvops.media import IMAGE_EXTS

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
YOLO_LAYOUTS = ("Ultralytics: images/<split>/<name>.jpg -> labels/<split>/<name>.txt (the last 'images' folder "
                "of the image path replaced by 'labels'); Roboflow: <split>/images -> <split>/labels; "
                "or <name>.txt beside each image")


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

    text = read_text(yaml_path, "data.yaml")
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
        idx = id_key(k)
        if not isinstance(idx, int) or idx < 0:
            raise SourceError(f"{yaml_path}: names key {k!r} is not a class index (0, 1, ...)")
        if idx in out:
            raise SourceError(f"{yaml_path}: names lists class index {idx} twice")
        if label_name(v) is None:
            raise SourceError(f"{yaml_path}: names[{k!r}] = {short(v)} is not a class name")
        out[idx] = label_name(v)  # type: ignore[assignment]
    if not out:
        raise SourceError(f"{yaml_path}: 'names' is empty; list the classes")
    return dict(sorted(out.items()))


def _entries(data: Dict[str, Any], key: str, yaml_path: Path) -> List[str]:
    v = data.get(key)
    if v is None:
        return []
    vals = v if isinstance(v, list) else [v]
    if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in vals):
        raise SourceError(f"{yaml_path}: '{key}' must be a path or a list of paths, not {short(v)}")
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
            raise SourceError(f"{self.yaml_path}: 'path' must be a folder, not {short(raw)}")
        p = Path(str(raw)).expanduser()
        p = p if p.is_absolute() else self.yaml_dir / p
        return p if is_dir(p) else self.yaml_dir  # an absolute path from the author's machine

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
        if is_dir(where):
            self._folder(where, split)
        elif where.suffix.lower() in IMAGE_EXTS:
            self._image(where, split)
        else:
            self._list_file(where, split)
        return True

    def _on_disk(self, split: str) -> None:
        for b in self._bases():
            if not (is_dir(b) and self.scope.admits(b)):
                continue
            for d in subdirs(b):
                if SPLIT_NAMES.get(d.name.lower()) == split:
                    self._folder(d, split)  # Roboflow: <split>/images (+ <split>/labels), or labels beside
            for d in subdirs(b / "images"):
                if SPLIT_NAMES.get(d.name.lower()) == split:
                    self._folder(d, split)  # Ultralytics: images/<split>

    def _folder(self, folder: Path, split: str) -> None:
        refused = self.scope.refusal(folder)
        if refused:
            self.ledger.add("file", str(folder), refused[0], f"split folder {refused[1]}; its files were not read")
            return
        images = image_files(folder, self.scope, self.ledger)
        for img in images:
            self._image(img, split)
        self._cover_labels(images)
        self.ledger.cover(folder, self.yaml_path, self.scope, labels=True)  # labels may sit beside the images

    def _cover_labels(self, images: List[Path]) -> None:
        """Label folders apart from the images (labels/<split>/...): their unused .txt are label files
        without an image. Covered before the image folders, which may contain them (<split>/labels)."""
        mirrors = dict.fromkeys(c[0].parent for c in map(label_candidates, images) if len(c) == 2)
        for m in mirrors:
            if is_dir(m) and self.scope.admits(m):
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
            if img is None or not is_file(img):
                self.ledger.add("image", raw, "image file missing", f"listed in {txt}:{n}")
                continue
            self._image(img, split)
            listed.append(img)
        self._cover_labels(listed)
        for folder in dict.fromkeys(img.parent for img in listed):
            if self.scope.admits(folder):
                self.ledger.cover(folder, self.yaml_path, self.scope, labels=True)

    def _image(self, img: Path, split: str) -> None:
        key = real_path(img) or str(img)
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
            state, why = probe(txt)
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
