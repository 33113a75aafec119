"""COCO evaluation: the one mAP contract of evaluate and export (pycocotools' COCOeval, bbox and segm).

Also the conversions between :class:`cvops.detector.runtime.Detections` and COCO results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from cvops.detector.runtime import Detections


def coco_eval(ann_file: Path, dets: List[Dict[str, Any]], iou_type: str = "bbox") -> Tuple[Dict[str, Any], Any]:
    """pycocotools' COCOeval (``iou_type`` "bbox", or "segm" for masks): headline numbers, per-class AP and
    the evaluator."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes([dict(d) for d in dets]) if dets else COCO()  # loadRes adds keys: not to the caller's
        if not dets:
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        prec = ev.eval["precision"][:, :, k, 0, -1]  # IoU x recall, area all, maxDets 100
        valid = prec[prec > -1]
        per_class[names[cat]] = float(valid.mean()) if valid.size else None
    s = ev.stats
    stats = {"mAP": _num(s[0]), "mAP50": _num(s[1]), "mAP75": _num(s[2]), "per_class_AP": per_class}
    return stats, ev


def _num(x: float) -> float:
    return float(max(x, 0.0))  # pycocotools reports -1 when a split has no ground truth


def read_split(ann_file: Path) -> Tuple[List[Dict[str, Any]], List[int]]:
    coco = json.loads(Path(ann_file).read_text())
    return coco["images"], [c["id"] for c in coco["categories"]]


def to_coco(d: Detections, image_id: int, cat_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """COCO results of one image's detections (with a ``segmentation`` RLE each when they carry masks)."""
    out = [{"image_id": int(image_id), "category_id": int(cat_ids[int(lab)]),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
           for b, s, lab in zip(d.boxes, d.scores, d.labels)]
    if d.masks is not None:
        for i, r in enumerate(out):
            r["segmentation"] = d.masks.rle(i)
    return out
