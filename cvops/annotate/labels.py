"""What a reviewed sample's labels may be: accepted prelabels, contradictions, outlines <-> masks.

Boxes here are ``Box(label, [x, y, w, h] in pixels, segmentation RLE or None, score or None)``.
Every annotation path (the App, Label Studio, prelabels accepted as they are) ends in
these boxes before :func:`cvops.annotate.review.export_reviewed` writes them, so one
set of rules decides what becomes ground truth:

- :func:`accept`: prelabels a reviewer accepted are the *confident* ones (score at or
  above the project's ``confidence``), with class-agnostic duplicates resolved (of
  boxes overlapping at ``annotate.duplicate_iou`` or more, the most confident stays).
- :func:`problems`: a reviewer's labels are refused, with the reason, when they name a
  class outside the project's, lie outside the image, or put two classes on one
  object (a contradiction a person must settle).
- :func:`mask_to_polygons` / :func:`polygons_to_mask`: instance outlines for tools that
  edit polygons (the App's polylines, Label Studio's PolygonLabels).
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

class Box(NamedTuple):
    label: str
    xywh: List[float]  # pixels
    segmentation: Optional[Any] = None  # a COCO RLE of the whole image
    score: Optional[float] = None


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def accept(boxes: Sequence[Box], confidence: float, duplicate_iou: float) -> List[Box]:
    """The prelabels a reviewer accepts by tagging a sample without editing it.

    Boxes scored below ``confidence`` are dropped (a box without a score was drawn by a
    person and stays); of boxes overlapping at ``duplicate_iou`` or more, whatever their
    classes, only the most confident stays (one object, one label).
    """
    kept: List[Box] = []
    ranked = sorted((b for b in boxes if b.score is None or b.score >= confidence),
                    key=lambda b: -(b.score if b.score is not None else 2.0))
    for b in ranked:
        if all(iou(b.xywh, k.xywh) < duplicate_iou for k in kept):
            kept.append(b)
    return kept


def problems(boxes: Sequence[Box], width: int, height: int, classes: Optional[Sequence[str]],
             duplicate_iou: float) -> List[str]:
    """Why a reviewer's labels cannot become ground truth as they are (empty: they can).

    - a label outside ``classes`` (``None``: any label is one);
    - a box without area, or one that lies outside the image (less than half of it inside: a coordinate
      mix-up, not a drag past the border; :func:`clip` cuts the others to the image);
    - two different classes on one object (IoU at or above ``duplicate_iou``).
    """
    out: List[str] = []
    allowed = set(classes) if classes is not None else None
    for b in boxes:
        x, y, w, h = b.xywh
        if allowed is not None and b.label not in allowed:
            out.append(f"label '{b.label}' is not one of the project's classes ({', '.join(classes or [])})")
        elif not (w > 0 and h > 0):
            out.append(f"'{b.label}' box {_fmt(b.xywh)} has no area")
        elif _inside(b.xywh, width, height) < 0.5:
            out.append(f"'{b.label}' box {_fmt(b.xywh)} lies outside the {width}x{height} image")
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a.label != b.label and iou(a.xywh, b.xywh) >= duplicate_iou:
                out.append(f"'{a.label}' and '{b.label}' on one object (boxes {_fmt(a.xywh)} and {_fmt(b.xywh)}, "
                           f"IoU {iou(a.xywh, b.xywh):.2f}): keep one")
    return out


def _inside(xywh: Sequence[float], width: int, height: int) -> float:
    """The fraction of a box's area inside the image."""
    x, y, w, h = xywh
    iw = max(0.0, min(x + w, width) - max(x, 0.0))
    ih = max(0.0, min(y + h, height) - max(y, 0.0))
    return iw * ih / (w * h) if w > 0 and h > 0 else 0.0


def clip(boxes: Sequence[Box], width: int, height: int) -> List[Box]:
    """Boxes cut to the image (a box reaching past the border, as tools and models draw them); a box with
    nothing inside the image (a model's box in its letterbox padding) is dropped."""
    out = []
    for b in boxes:
        x, y, w, h = b.xywh
        x0, y0 = min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))
        x1, y1 = min(max(x + w, 0.0), float(width)), min(max(y + h, 0.0), float(height))
        if x1 > x0 and y1 > y0:
            out.append(b._replace(xywh=[x0, y0, x1 - x0, y1 - y0]))
    return out


def _fmt(xywh: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in xywh) + "]"


# ------------------------------------------------------------------ outlines
def mask_to_polygons(mask: Any, min_points: int = 3) -> List[List[Tuple[float, float]]]:
    """The outer outlines of a binary mask, in pixel coordinates (one polygon per connected part).

    Each polygon runs through the centres of the mask's boundary pixels, so
    :func:`polygons_to_mask` fills them back to the same pixels (holes are not kept).
    """
    import cv2
    import numpy as np

    m = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = [(float(p[0][0]), float(p[0][1])) for p in c]
        if len(pts) < min_points:  # a line or a dot: trace it as a thin quad so it survives the trip
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            pts = [(min(xs), min(ys)), (max(xs), min(ys)), (max(xs), max(ys)), (min(xs), max(ys))]
        polys.append(pts)
    return polys


def polygons_to_mask(polygons: Sequence[Sequence[Tuple[float, float]]], width: int, height: int) -> Any:
    """A ``(height, width)`` bool mask with every polygon (pixel coordinates) filled, its outline included."""
    import cv2
    import numpy as np

    m = np.zeros((height, width), np.uint8)
    for poly in polygons:
        if len(poly) < 3:
            continue
        pts = np.round(np.asarray(poly, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(m, [pts], 1)
        cv2.polylines(m, [pts], True, 1)
    return m.astype(bool)


def mask_box(mask: Any) -> Optional[List[float]]:
    """The ``[x, y, w, h]`` pixel box around a mask's set pixels, or None for an empty mask."""
    import numpy as np

    ys, xs = np.nonzero(np.asarray(mask))
    if xs.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
