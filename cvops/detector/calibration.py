"""A label-free precision estimate: each class's score calibrated into "this box is right" at export time.

At export, the exported model's detections on the validation split are matched to the ground truth (COCO
style: by score, one box per object, IoU >= 0.5), and for each class an isotonic (monotone) regression of
"true positive" on the score is fitted (pool-adjacent-violators). The curve ships with the export
(``precision_calibration.json``). On live traffic, the mean calibrated probability of the detections a
server answers at or above the confidence threshold is the **expected precision** of what it serves,
per class and overall, with no labels.

It holds while a score means on live traffic what it meant on the validation split: a shift in degree
(darker, blurrier images, a new camera of the same kind). It does not hold for classes or objects the
model never saw (new kinds of content are often detected with confident wrong boxes), and it is thin for
a class with few validation boxes (such a class uses the curve of all classes together).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

ALL = "all"
MIN_BOXES = 20  # a class with fewer validation detections uses the curve of all classes


def pav(scores: np.ndarray, hits: np.ndarray) -> Tuple[List[float], List[float]]:
    """Isotonic regression of ``hits`` (0/1) on ``scores`` by pool-adjacent-violators: the knots ``(x, y)``
    of a non-decreasing step curve (x: each block's mean score, y: its hit rate), for :func:`numpy.interp`."""
    order = np.argsort(scores, kind="stable")
    xs, ys = scores[order].astype(float), hits[order].astype(float)
    blocks: List[List[float]] = []  # [sum of x, sum of y, count]
    for x, y in zip(xs, ys):
        blocks.append([x, y, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, n = blocks.pop()
            blocks[-1][0] += sx
            blocks[-1][1] += sy
            blocks[-1][2] += n
    return [round(b[0] / b[2], 5) for b in blocks], [round(b[1] / b[2], 5) for b in blocks]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes ``a`` (N, 4) against ``b`` (M, 4)."""
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(dets: Sequence[Dict[str, Any]], truth: Sequence[Dict[str, Any]], iou: float = 0.5) -> List[bool]:
    """For each of one image's detections (COCO results, ``category_id`` and xywh ``bbox``), whether it is a
    true positive: matched by descending score to the best unmatched ground-truth box of its class
    (``iscrowd`` boxes neither count nor penalise, as in COCO)."""
    hit = [False] * len(dets)
    if not dets:
        return hit
    by_cls: Dict[Any, List[int]] = {}
    for k, t in enumerate(truth):
        by_cls.setdefault(t["category_id"], []).append(k)
    for cls in {d["category_id"] for d in dets}:
        idx = sorted((i for i, d in enumerate(dets) if d["category_id"] == cls), key=lambda i: -dets[i]["score"])
        gts = [truth[k] for k in by_cls.get(cls, [])]
        if not gts:
            continue
        ious = _iou(np.array([dets[i]["bbox"] for i in idx], float), np.array([g["bbox"] for g in gts], float))
        crowd = np.array([bool(g.get("iscrowd")) for g in gts])
        used = np.zeros(len(gts), bool)
        for row, i in enumerate(idx):
            cand = np.where(~used & ~crowd & (ious[row] >= iou), ious[row], -1.0)
            j = int(cand.argmax())
            if cand[j] >= 0:
                used[j] = hit[i] = True
    return hit


def fit(coco: Dict[str, Any], dets: Sequence[Dict[str, Any]], confidence: float, iou: float = 0.5,
        split: str = "val") -> Dict[str, Any]:
    """The calibration of a model from its detections ``dets`` (COCO results) on the split ``coco``."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    truth: Dict[Any, List[Dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        truth.setdefault(a["image_id"], []).append(a)
    per_image: Dict[Any, List[Dict[str, Any]]] = {}
    for d in dets:
        per_image.setdefault(d["image_id"], []).append(d)
    rows: List[Tuple[str, float, bool]] = []
    for image_id, ds in per_image.items():
        for d, ok in zip(ds, match(ds, truth.get(image_id, []), iou)):
            rows.append((names.get(d["category_id"], str(d["category_id"])), float(d["score"]), ok))
    out: Dict[str, Any] = {"iou": iou, "split": split, "confidence": confidence, "images": len(coco["images"]),
                           "curves": {}, "reference": {}, "boxes": {}}

    def add(name: str, sel: List[Tuple[str, float, bool]]) -> None:
        s = np.array([r[1] for r in sel], float)
        h = np.array([r[2] for r in sel], float)
        out["boxes"][name] = len(sel)
        if len(sel) >= (1 if name == ALL else MIN_BOXES):
            x, y = pav(s, h)
            out["curves"][name] = {"x": x, "y": y}
        kept = s >= confidence
        out["reference"][name] = round(float(h[kept].mean()), 5) if kept.any() else None

    add(ALL, rows)
    for name in sorted(set(names.values())):
        add(name, [r for r in rows if r[0] == name])
    return out


class Calibration:
    """A fitted calibration (:func:`fit`), applied to served detections."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = data
        self.confidence = float(data["confidence"])
        self.curves = {k: (np.asarray(v["x"], float), np.asarray(v["y"], float))
                       for k, v in data.get("curves", {}).items()}
        self.reference: Dict[str, Optional[float]] = dict(data.get("reference", {}))

    @classmethod
    def read(cls, path: Path) -> "Calibration":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def probability(self, label: str, score: float) -> Optional[float]:
        curve = self.curves.get(label) or self.curves.get(ALL)
        if curve is None:
            return None
        return float(np.interp(score, curve[0], curve[1]))

    def estimate(self, detections: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
        """``{class: {"precision": expected precision, "boxes": n}}`` and ``all``, over the detections at or
        above the confidence threshold (served detections: ``class``, the name, and ``score`` each)."""
        sums: Dict[str, List[float]] = {}
        for d in detections:
            score = d.get("score")
            if not isinstance(score, (int, float)) or not score >= self.confidence:
                continue
            name = str(d.get("class", d.get("label")))
            p = self.probability(name, float(score))
            if p is None:
                continue
            for key in (name, ALL):
                sums.setdefault(key, []).append(p)
        return {k: {"precision": float(np.mean(v)), "boxes": len(v)} for k, v in sums.items()}
