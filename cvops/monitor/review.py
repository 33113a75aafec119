"""Reviewed edge cases -> a new, immutable COCO source for curate (``cvops review``: :mod:`cvops.commands.review`).

The monitor stage puts edge cases into the FiftyOne review dataset
(``monitor.review_dataset``, default ``<project>-review``) with the model's
predictions as ``prelabels``. A person opens it in the App
(``cvops app --dataset <project>-review``), corrects the boxes in
``ground_truth`` (or leaves them empty to accept the prelabels) and tags each
finished sample ``reviewed`` (``rejected`` ones are left out). Then::

    cvops review recipe=quickstart                  # -> <store>/../reviewed/quickstart/<version>/annotations.json
    cvops review recipe=quickstart --out /data/reviewed

writes the reviewed samples as a COCO file in a folder named by its content
hash, and prints the command that curates the next dataset version with them
added (``data.extra``)::

    cvops recipe=quickstart 'data.extra=[{format: coco, path: /abs/.../annotations.json}]'

The same reviewed content always gives the same folder; any change (one more
reviewed sample, one corrected box) gives a new one, and folders are never
rewritten with other content, so every curate version points at a fixed file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cvops.errors import UserError

REVIEWED_TAG = "reviewed"
REJECTED_TAG = "rejected"
ANNOTATIONS = "annotations.json"

_HOW_TO_TAG = ("open it with `cvops app --dataset {name}`, correct the boxes in the '{field}' field (or keep the "
               "'{fallback}' predictions), select the finished samples and tag them '{tag}' with the tag button "
               "above the grid (tag '{rejected}' to leave one out)")


class ReviewError(UserError):
    """A review dataset that cannot be exported as asked (the message says how to review and tag)."""


# ------------------------------------------------------------------ export
def export_reviewed(dataset_name: str, out_root: Path, classes: Optional[Sequence[str]] = None,
                    label_field: str = "ground_truth", fallback_field: str = "prelabels") -> Dict[str, Any]:
    """Write the reviewed samples of a FiftyOne review dataset as a COCO detection file.

    Samples tagged ``reviewed`` and not ``rejected`` are exported. Each takes its
    boxes from ``label_field`` when that is set on the sample (a human labelled it;
    an empty ``Detections`` means "no objects"), else from ``fallback_field`` (the
    prelabels were accepted as they are). Relative FiftyOne boxes become pixel
    boxes using the sample's metadata, or the image file (EXIF orientation applied,
    as the App shows it) when there is none. A detection with an instance mask
    (``Detection.mask``, or ``mask_path``; the monitor puts a mask model's masks
    on the prelabels) also gets its ``segmentation``, a compressed RLE of the
    whole image (``curate.masks=true`` reads it); an empty mask gets none.

    The file goes to ``out_root/<version>/annotations.json`` where ``version`` is
    the first 12 hex digits of the SHA-256 of the file's content (sorted image
    paths, sizes, labels and boxes, categories): the same reviewed content lands in
    the same folder, a change in a new one, and an existing version is never
    rewritten with other content.

    Args:
        dataset_name: the FiftyOne review dataset.
        out_root: parent folder of the version folders (created).
        classes: the category list and order; labels outside it are not
            exported but counted in ``skipped_unknown_labels``. ``None``: the
            sorted labels seen.
        label_field: the reviewed labels (``Detections``).
        fallback_field: labels used when ``label_field`` is unset (``Detections``).

    Returns:
        ``{"path", "images", "boxes", "from_ground_truth", "from_prelabels",
        "skipped_unknown_labels", "version"}`` plus ``masks`` (annotations with a
        segmentation), ``dataset``,
        ``skipped_missing_files`` (reviewed samples whose image file is gone),
        ``skipped_invalid_boxes`` (detections without a 4-number box) and ``new``
        (False when this version had been exported before).

    Raises:
        ReviewError: the dataset does not exist, has no usable reviewed sample, or
            a label field does not hold detections.
    """
    from cvops.fo import connect

    fo = connect()
    if not fo.dataset_exists(dataset_name):
        raise ReviewError(f"review dataset '{dataset_name}' does not exist (FiftyOne has: "
                         f"{', '.join(sorted(fo.list_datasets())) or 'no datasets'}); the monitor stage creates it "
                         "when it finds edge cases (set monitor.review_dataset to use another one)")
    ds = fo.load_dataset(dataset_name)
    how = _HOW_TO_TAG.format(name=dataset_name, field=label_field, fallback=fallback_field, tag=REVIEWED_TAG,
                             rejected=REJECTED_TAG)
    view = ds.match_tags(REVIEWED_TAG).match_tags(REJECTED_TAG, bool=False)
    if len(view) == 0:
        reviewed = len(ds.match_tags(REVIEWED_TAG))
        detail = f" ({reviewed} tagged '{REVIEWED_TAG}' are also tagged '{REJECTED_TAG}')" if reviewed else ""
        raise ReviewError(f"review dataset '{dataset_name}' has no samples tagged '{REVIEWED_TAG}' out of "
                         f"{len(ds)}{detail}; to review: {how}")
    schema = ds.get_field_schema()
    if label_field not in schema and fallback_field not in schema:
        raise ReviewError(f"review dataset '{dataset_name}' has neither a '{label_field}' nor a '{fallback_field}' "
                         f"field (fields: {', '.join(sorted(schema))})")

    n = len(view)
    filepaths: List[str] = view.values("filepath")
    primary = view.values(label_field) if label_field in schema else [None] * n
    fallback = view.values(fallback_field) if fallback_field in schema else [None] * n
    metadata = view.values("metadata")

    unknown: Counter = Counter()
    missing: List[str] = []
    invalid = 0
    from_gt = from_pre = 0
    records: List[Tuple[str, int, int, str, List[Tuple[str, List[float], Optional[Dict[str, Any]]]]]] = []
    for fp, gt, pre, meta in zip(filepaths, primary, fallback, metadata):
        path = os.path.abspath(fp)
        if not Path(path).is_file():
            missing.append(path)
            continue
        if gt is not None:
            dets, source = gt, label_field
            from_gt += 1
        else:
            dets, source = pre, fallback_field
            from_pre += 1
        if dets is not None and not isinstance(dets, fo.Detections):
            raise ReviewError(f"review dataset '{dataset_name}': field '{source}' of {fp} holds "
                             f"{type(dets).__name__}, not Detections")
        w, h = _size(path, meta)
        boxes: List[Tuple[str, List[float], Optional[Dict[str, Any]]]] = []
        for det in (dets.detections if dets is not None else []):
            label = str(det.label)
            bb = det.bounding_box
            if bb is None or len(bb) != 4:
                invalid += 1
                continue
            if classes is not None and label not in classes:
                unknown[label] += 1
                continue
            x, y, bw, bh = (float(v) for v in bb)
            boxes.append((label, [round(x * w, 3), round(y * h, 3), round(bw * w, 3), round(bh * h, 3)],
                          _segmentation(det, (x, y, bw, bh), w, h)))
        boxes.sort(key=lambda b: (b[0], b[1], json.dumps(b[2], sort_keys=True)))
        records.append((path, w, h, source, boxes))
    if not records:
        raise ReviewError(f"review dataset '{dataset_name}': none of the {n} reviewed sample(s) has its image file "
                         f"any more (first: {missing[0]})")
    records.sort(key=lambda r: (r[0], json.dumps(r[4])))

    categories = list(classes) if classes is not None else sorted({b[0] for r in records for b in r[4]})
    coco = _coco(records, categories)
    content = json.dumps(coco, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(content.encode()).hexdigest()[:12]
    out_dir = Path(out_root).expanduser().absolute() / version
    target = out_dir / ANNOTATIONS
    new = not _same_content(target, coco)
    if new:  # write once, atomically: a reader never sees a partial file
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{ANNOTATIONS}.{os.getpid()}.tmp"
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, target)
    return {
        "path": str(target),
        "images": len(records),
        "boxes": len(coco["annotations"]),
        "masks": sum(1 for a in coco["annotations"] if "segmentation" in a),
        "from_ground_truth": from_gt,
        "from_prelabels": from_pre,
        "skipped_unknown_labels": dict(sorted(unknown.items())),
        "version": version,
        "dataset": dataset_name,
        "skipped_missing_files": missing,
        "skipped_invalid_boxes": invalid,
        "new": new,
    }


def _size(path: str, meta: Any) -> Tuple[int, int]:
    """(width, height) as the App shows the image: FiftyOne metadata, else the file
    with its EXIF orientation applied (90° rotations swap the sides)."""
    if meta is not None and getattr(meta, "width", None) and getattr(meta, "height", None):
        return int(meta.width), int(meta.height)
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    return int(w), int(h)


def _segmentation(det: Any, box: Tuple[float, float, float, float], w: int, h: int) -> Optional[Dict[str, Any]]:
    """The whole-image RLE of a FiftyOne detection's instance mask, or None (no mask, or an empty one).

    FiftyOne stretches a detection's mask over its box, so the mask is pasted over the box's pixel
    region (resized, nearest neighbour, when a tool stored it at another resolution) and cut to the image.
    """
    import numpy as np

    from cvops import masks

    get = getattr(det, "get_mask", None)
    mask = get() if callable(get) else det.mask
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 3:  # a mask image read with its channels
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        return None
    x0, y0 = int(round(box[0] * w)), int(round(box[1] * h))
    x1, y1 = max(int(round((box[0] + box[2]) * w)), x0 + 1), max(int(round((box[1] + box[3]) * h)), y0 + 1)
    if mask.shape != (y1 - y0, x1 - x0):
        import cv2

        mask = cv2.resize(mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    full = np.zeros((h, w), bool)
    full[cy0:cy1, cx0:cx1] = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] > 0
    return masks.encode(full) if full.any() else None


def _coco(records: List[Tuple[str, int, int, str, List[Tuple[str, List[float], Optional[Dict[str, Any]]]]]],
          categories: List[str]) -> Dict[str, Any]:
    """COCO detection dict (a ``segmentation`` where a mask was exported); nothing time- or
    machine-dependent beyond the paths."""
    from cvops import masks

    cat = {c: i + 1 for i, c in enumerate(categories)}
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for path, w, h, source, boxes in records:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": path, "width": w, "height": h, "label_source": source})
        for label, (x, y, bw, bh), seg in boxes:
            ann: Dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat[label],
                                   "bbox": [x, y, bw, bh], "area": round(bw * bh, 3), "iscrowd": 0}
            if seg is not None:
                ann.update(segmentation=seg, area=masks.area(seg))
            annotations.append(ann)
    return {"info": {"description": "reviewed edge cases exported by cvops review"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": c} for c, i in cat.items()]}


def _same_content(path: Path, coco: Dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")) == coco
    except (OSError, ValueError):
        return False


# ------------------------------------------------- the next curate's overrides
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_/.\-+@%]*")
_KEYWORDS = {"true", "false", "null", "nan", "inf"}


def hydra_value(v: Any) -> str:
    """``v`` written in Hydra's override grammar (strings quoted where they must be)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(hydra_value(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in _KEYWORDS:
        return s
    q = '"' if '"' not in s else "'"
    # Hydra: escape the quote, and double backslashes that precede a quote (or the closing one)
    s = re.sub(rf"(\\*){q}", lambda m: m.group(1) * 2 + "\\" + q, s)
    s = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, s)
    s = s.replace("${", "\\${")  # a literal ${, not an interpolation
    return f"{q}{s}{q}"


def _within(path: str, root: Path) -> bool:
    try:
        return Path(path).expanduser().absolute().is_relative_to(root)
    except (TypeError, ValueError):
        return False


def curate_overrides(overrides: Sequence[str], extra: Sequence[Dict[str, Any]], json_path: str,
                     out_root: Path) -> List[str]:
    """The command line (``overrides`` of the review) that curates with the export added to ``data.extra``.

    Earlier exports under ``out_root`` are replaced (the new one holds every
    reviewed sample); other ``data.extra`` entries are kept.
    """
    keep = [dict(e) for e in extra if not (e.get("path") and _within(str(e["path"]), out_root))]
    # the export lists the reviewed images where the monitor stored them, outside its own folder: this entry
    # (written by cvops, printed for the user to run) opts in to reading them
    entries = keep + [{"format": "coco", "path": json_path, "allow_outside_paths": True}]
    args = [o for o in overrides if not re.match(r"^[+~]*data\.extra(=|$)", o)]
    return [*args, f"data.extra={hydra_value(entries)}"]
