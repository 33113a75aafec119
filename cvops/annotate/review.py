"""Reviewed edge cases -> a new, immutable COCO source for curate (``cvops review``: :mod:`cvops.commands.review`).

The monitor stage puts edge cases into the store's FiftyOne review dataset
(:func:`review_dataset`) with the model's predictions as ``prelabels``.
``cvops annotate`` prepares it for people (:mod:`cvops.annotate`): in the App,
a reviewer corrects the boxes in ``ground_truth`` (or the ``outlines`` of a
segmentation project) and tags each finished sample ``reviewed``
(``rejected`` ones are left out); tagging without editing accepts the
confident prelabels. Then::

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

from cvops.annotate.labels import Box, accept, clip, mask_box, polygons_to_mask, problems
from cvops.errors import UserError

REVIEWED_TAG = "reviewed"
REJECTED_TAG = "rejected"
ANNOTATIONS = "annotations.json"
#: A segmentation review's editable outlines (``Polylines``; :mod:`cvops.annotate.app`), read before ``ground_truth``.
OUTLINES = "outlines"

_HOW_TO_TAG = ("open it with `cvops app --dataset {name}`, correct the boxes in the '{field}' field (or keep the "
               "'{fallback}' predictions), select the finished samples and tag them '{tag}' with the tag button "
               "above the grid (tag '{rejected}' to leave one out)")


def review_dataset(project: str, store_id: str, explicit: Optional[str] = None) -> str:
    """The FiftyOne dataset of a project's edge cases in one store: ``monitor.review_dataset`` when set,
    else ``<project>-review-<6 hex of the store id>``.

    Tied to the store like the curated datasets are: two stores of one project (a laptop and the team's
    bucket, two experiments) never see, nor export, each other's edge cases.
    """
    if explicit:
        return str(explicit)
    return f"{project}-review-{hashlib.sha256(store_id.encode()).hexdigest()[:6]}"


class ReviewError(UserError):
    """A review dataset that cannot be exported as asked (the message says how to review and tag)."""


# ------------------------------------------------------------------ export
def export_reviewed(dataset_name: str, out_root: Path, classes: Optional[Sequence[str]] = None,
                    label_field: str = "ground_truth", fallback_field: str = "prelabels", *,
                    confidence: float = 0.3, duplicate_iou: float = 0.7,
                    outline_field: Optional[str] = OUTLINES) -> Dict[str, Any]:
    """Write the reviewed samples of a FiftyOne review dataset as a COCO detection file.

    Samples tagged ``reviewed`` and not ``rejected`` are exported. Each takes its
    labels from the first of ``outline_field`` (``Polylines``: a segmentation
    reviewer's outlines, filled into masks) and ``label_field`` (``Detections``)
    set on the sample (a person labelled it; an empty one means "no objects"), else
    from ``fallback_field``: the prelabels, accepted as they are, which keeps only
    the confident ones with one label per object (:func:`cvops.annotate.labels.accept`).
    A sample whose labels cannot be ground truth (a label outside ``classes``, a box
    outside the image, two classes on one object: :func:`cvops.annotate.labels.problems`)
    is left out whole and listed in ``quarantined`` with the reasons, never
    exported in part.

    Relative FiftyOne boxes become pixel boxes using the sample's metadata, or the
    image file (EXIF orientation applied, as the App shows it) when there is none.
    A detection with an instance mask (``Detection.mask``, or ``mask_path``; the
    monitor puts a mask model's masks on the prelabels) also gets its
    ``segmentation``, a compressed RLE of the whole image (``curate.masks=true``
    reads it); an empty mask gets none.

    The file goes to ``out_root/<version>/annotations.json`` where ``version`` is
    the first 12 hex digits of the SHA-256 of the file's content (sorted image
    paths, sizes, labels and boxes, categories): the same reviewed content lands in
    the same folder, a change in a new one, and an existing version is never
    rewritten with other content.

    Args:
        dataset_name: the FiftyOne review dataset.
        out_root: parent folder of the version folders (created).
        classes: the category list and order; ``None``: the sorted labels seen
            (and any label is allowed).
        label_field: the reviewed boxes (``Detections``).
        fallback_field: the prelabels, used when no reviewed field is set.
        confidence: the project's confidence threshold (accepted prelabels).
        duplicate_iou: boxes of different classes overlapping this much are one object.
        outline_field: the reviewed outlines (``Polylines``), read first; None: none.

    Returns:
        ``{"path", "images", "boxes", "from_ground_truth", "from_prelabels",
        "skipped_unknown_labels", "version"}`` plus ``masks`` (annotations with a
        segmentation), ``dataset``, ``quarantined`` (rows ``{"file", "sample_id",
        "field", "reasons"}``), ``skipped_unknown_labels`` (the labels outside
        ``classes`` in those rows, counted), ``skipped_missing_files`` (reviewed
        samples whose image file is gone), ``skipped_invalid_boxes`` (labels without
        geometry) and ``new`` (False when this version had been exported before).

    Raises:
        ReviewError: the dataset does not exist, has no usable reviewed sample, or
            a label field does not hold detections or polylines.
    """
    from cvops.fo import connect

    fo = connect()
    if not fo.dataset_exists(dataset_name):
        stem = dataset_name.split("-review")[0]
        others = sorted(d for d in fo.list_datasets() if d != dataset_name and d.split("-review")[0] == stem
                        and "-review" in d)
        also = f" (other stores' review datasets of this project: {', '.join(others)})" if others else ""
        raise ReviewError(f"review dataset '{dataset_name}' does not exist: this store has no edge cases yet{also}; "
                         "the monitor stage puts them there (stages=[monitor]); set monitor.review_dataset to "
                         "work on another one")
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
    if label_field not in schema and fallback_field not in schema and outline_field not in schema:
        raise ReviewError(f"review dataset '{dataset_name}' has neither a '{label_field}' nor a '{fallback_field}' "
                         f"field (fields: {', '.join(sorted(schema))})")

    n = len(view)
    ids: List[str] = view.values("id")
    filepaths: List[str] = view.values("filepath")
    # a reviewer's labels: the first of label_fields set on the sample (outlines before boxes: the outlines
    # were what a segmentation reviewer edited)
    label_fields = [f for f in (outline_field, label_field) if f and f in schema]
    primary = list(zip(*[view.values(f) for f in label_fields])) if label_fields else [()] * n
    fallback = view.values(fallback_field) if fallback_field in schema else [None] * n
    metadata = view.values("metadata")

    unknown: Counter = Counter()
    missing: List[str] = []
    quarantined: List[Dict[str, Any]] = []
    invalid = 0
    from_gt = from_pre = 0
    records: List[Tuple[str, int, int, str, List[Tuple[str, List[float], Optional[Dict[str, Any]]]]]] = []
    for sid, fp, gt, pre, meta in zip(ids, filepaths, primary, fallback, metadata):
        path = os.path.abspath(fp)
        if not Path(path).is_file():
            missing.append(path)
            continue
        source, dets = next(((f, v) for f, v in zip(label_fields, gt) if v is not None), (fallback_field, pre))
        if dets is not None and not isinstance(dets, (fo.Detections, fo.Polylines)):
            raise ReviewError(f"review dataset '{dataset_name}': field '{source}' of {fp} holds "
                             f"{type(dets).__name__}, not Detections or Polylines")
        w, h = image_size(path, meta)
        found, bad = boxes_of(dets, w, h)
        invalid += bad
        if source == fallback_field:  # accepted as they are: the confident ones, one label per object
            found = accept(clip(found, w, h), confidence, duplicate_iou)
        why = problems(found, w, h, classes, duplicate_iou)
        if why:
            for b in found:
                if classes is not None and b.label not in classes:
                    unknown[b.label] += 1
            quarantined.append({"file": path, "sample_id": sid, "field": source, "reasons": why})
            continue
        from_gt += source != fallback_field
        from_pre += source == fallback_field
        boxes = [(b.label, [round(v, 3) for v in b.xywh], b.segmentation) for b in clip(found, w, h)]
        boxes.sort(key=lambda b: (b[0], b[1], json.dumps(b[2], sort_keys=True)))
        records.append((path, w, h, source, boxes))
    if not records:
        if quarantined:
            q = quarantined[0]
            raise ReviewError(f"review dataset '{dataset_name}': every reviewed sample is refused or gone "
                             f"({len(quarantined)} refused, {len(missing)} without an image file); first refused: "
                             f"{q['file']} ({q['field']}): {'; '.join(q['reasons'])}; fix the labels in the App "
                             f"(cvops app --dataset {dataset_name}) and export again")
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
        "quarantined": quarantined,
        "new": new,
    }


def boxes_of(labels: Any, w: int, h: int) -> Tuple[List[Box], int]:
    """A field's Detections or Polylines as pixel :class:`Box` es, and how many had no usable geometry."""
    if labels is None:
        return [], 0
    out: List[Box] = []
    bad = 0
    if hasattr(labels, "polylines"):  # outlines: each filled polyline is one instance
        from cvops import masks

        for pl in labels.polylines:
            polys = [[(float(x) * w, float(y) * h) for x, y in shape] for shape in (pl.points or [])
                     if len(shape) >= 3]
            full = polygons_to_mask(polys, w, h) if polys else None
            box = mask_box(full) if full is not None else None
            if box is None:
                bad += 1
                continue
            out.append(Box(str(pl.label), box, masks.encode(full), _score(pl)))
        return out, bad
    for det in labels.detections:
        bb = det.bounding_box
        if bb is None or len(bb) != 4:
            bad += 1
            continue
        x, y, bw, bh = (float(v) for v in bb)
        out.append(Box(str(det.label), [x * w, y * h, bw * w, bh * h], _segmentation(det, (x, y, bw, bh), w, h),
                       _score(det)))
    return out, bad


def _score(label: Any) -> Optional[float]:
    c = getattr(label, "confidence", None)
    return float(c) if c is not None else None


def image_size(path: str, meta: Any) -> Tuple[int, int]:
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


def write_quarantine(folder: Path, rows: List[Dict[str, Any]]) -> Path:
    """The refused samples' rows beside the export (``quarantined.json``; rewritten by each export)."""
    from cvops.store.base import write_json_atomic

    path = Path(folder) / "quarantined.json"
    write_json_atomic(path, rows, durable=False)
    return path


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
