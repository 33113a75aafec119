"""Pascal VOC: ``Annotations/*.xml`` + ``JPEGImages/`` (splits from ``ImageSets/Main``), or xml beside images."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cvops.curate.sources.fields import decode_text, num, parse_size
from cvops.curate.sources.items import Box, Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import Scope, is_dir, is_file, is_junk, real_path, split_of, walk_files
from cvops.errors import SourceError
from cvops.media import IMAGE_EXTS


def read_voc(root: Path, source: str, ledger: Ledger, scope: Optional[Scope] = None) -> Tuple[List[Item], List[str]]:
    """Pascal VOC: ``Annotations/*.xml`` + ``JPEGImages/`` (splits from
    ``ImageSets/Main/<split>.txt`` when present), or xml files beside images.

    Box corners are taken as written (xmin, ymin, xmax, ymax in pixels).
    """
    scope = (scope or Scope()).plus(root)
    ann_dir = root / "Annotations" if is_dir(root / "Annotations") else root
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
        self.img_dirs = [d for d in (root / "JPEGImages", root / "images", ann_dir, root) if is_dir(d)]
        self.split_of = self._sets(root / "ImageSets")
        self.items: List[Item] = []
        self.names: List[str] = []
        self.by_file: Dict[str, Tuple[Path, Item]] = {}

    def _sets(self, sets: Path) -> Dict[str, str]:
        """Image stem -> split from ImageSets/Main/{train,val,test}.txt (the other lists there are VOC's too)."""
        split_of: Dict[str, str] = {}
        if not is_dir(sets) or not self.scope.admits(sets):
            return split_of
        for f in walk_files(sets, self.scope):
            if f.suffix.lower() == ".txt" and self.scope.admits(f):
                self.ledger.use(f)
        for name in ("train", "val", "test"):
            f = sets / "Main" / f"{name}.txt"
            if is_file(f) and self.scope.admits(f):
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
        if by_name is not None and own is not None and named != xml.stem and real_path(by_name) != real_path(own):
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
        ok, declared = parse_size(w, h)
        if not ok:
            self.ledger.add("image", str(img), "malformed <size> in the annotation",
                            f"{xml}: width={w!r} height={h!r}; write pixels or remove <size>", boxes=len(objects))
            return
        item = Item(img, str(img), self.source, [], declared, split=self.split_of.get(xml.stem) or split_of(img))
        for k, obj in enumerate(objects, 1):
            self._object(item, obj, f"{xml}#object-{k}")
        self._keep(item, xml)

    def _images(self, fname: str, xml: Path) -> Tuple[Optional[Path], Optional[Path]]:
        """(the first existing <filename> in the image folders, the first existing image named like the xml):
        <filename> tags are often stale, so the xml's own name is the fallback, and the check when they differ."""
        by_name = next((c for d in self.img_dirs if is_file(c := d / fname)), None)
        own = next((c for d in self.img_dirs for ext in sorted(IMAGE_EXTS) if is_file(c := d / f"{xml.stem}{ext}")),
                   None)
        return by_name, own

    def _object(self, item: Item, obj: Any, origin: str) -> None:
        label = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        vals = [num(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] if bb is not None else [None]
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
        key = real_path(item.path) or item.ref
        if key in self.by_file:
            first_xml, first = self.by_file[key]
            first.boxes += item.boxes or []  # type: ignore[operator]
            self.ledger.add("label", item.ref, "image annotated by two xml files",
                            f"{xml} and {first_xml}: one sample with the boxes of both")
            return
        self.by_file[key] = (xml, item)
        self.items.append(item)
