"""Instance masks: COCO RLE in and out, polygons to masks, and the checks a hostile file needs.

One representation travels through cvops: **compressed COCO RLE of the whole
image** (``{"size": [h, w], "counts": "<string>"}``), the form pycocotools,
FiftyOne's COCO tools and mmdet read. It is compact (it grows with the
outline, not the area), so a sample with many large instances costs little.

Everything here is pure numpy, no C decoder on untrusted bytes: a compressed
RLE string is parsed and checked (its runs must add up to ``h * w``) before any
array is allocated from it, and a polygon is clipped to the image before it is
rasterised, so a coordinate of 1e12 cannot ask for a huge buffer. Problems
raise :class:`MaskError` with a reason fit for a quarantine row.

The RLE layout (a fact of the format): run lengths over the pixels in
column-major order, starting with a run of zeros; the string form stores each
run as 5-bit groups (``chr(48 + group)``, bit 0x20 = more groups follow, the
last group's bit 0x10 = negative), runs after the third as the difference to
the run two before.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: A polygon (or all polygons of one instance together) with more points is refused, not rasterised.
MAX_POLYGON_POINTS = 100_000
RLE = Dict[str, Any]


class MaskError(ValueError):
    """A segmentation that cannot be used; ``reason`` is the quarantine row's reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# ----------------------------------------------------------------- RLE codec
def counts_from_string(s: str, limit: int) -> List[int]:
    """Run lengths of a compressed RLE string; raises MaskError when it does not parse or a run is negative.

    ``limit`` (the image's pixel count) bounds every run, so a hostile string never yields a huge number.
    """
    if len(s) > 13 * (limit + 1):  # more characters than the runs of any image this size can need
        raise MaskError("RLE counts do not add up to the image size", f"{len(s)} characters for {limit} pixels")
    counts: List[int] = []
    x = k = total = 0
    more = False
    for ch in s:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise MaskError("RLE counts do not parse", f"character {ch!r} is not part of a COCO RLE string")
        x |= (c & 0x1F) << (5 * k)
        more = bool(c & 0x20)
        k += 1
        if k > 13:  # 65 bits: no run of a real image is that long
            raise MaskError("RLE counts do not parse", "a run longer than any image")
        if more:
            continue
        if c & 0x10:
            x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        total += x
        if not 0 <= x <= limit or total > limit:
            raise MaskError("RLE counts do not add up to the image size",
                            f"run {len(counts)} is {x}, {total} pixels so far (image: {limit})")
        if x == 0 and counts:  # only the first run (zeros before the first mask pixel) may be empty
            raise MaskError("RLE counts do not parse", f"run {len(counts)} is empty")
        counts.append(x)
        x = k = 0
    if more:
        raise MaskError("RLE counts do not parse", "the string ends inside a run")
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """The compressed string of run lengths (pycocotools' encoding)."""
    out: List[str] = []
    for i, run in enumerate(counts):
        x = int(run) - (int(counts[i - 2]) if i > 2 else 0)
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
            if not more:
                break
    return "".join(out)


def encode(mask: np.ndarray) -> RLE:
    """Compressed RLE of a 2-D boolean mask (h, w)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [int(h), int(w)], "counts": counts_to_string(runs)}


def _runs(rle: RLE) -> Tuple[int, int, List[int]]:
    h, w = (int(v) for v in rle["size"])
    c = rle["counts"]
    runs = counts_from_string(c, h * w) if isinstance(c, str) else [int(v) for v in c]
    return h, w, runs


def decode(rle: RLE) -> np.ndarray:
    """The boolean mask (h, w) of a checked RLE (see :func:`from_segmentation`)."""
    h, w, runs = _runs(rle)
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T


def area(rle: RLE) -> int:
    return int(sum(_runs(rle)[2][1::2]))


def fiftyone_mask(rle: RLE, box: Sequence[float]) -> Tuple[List[float], np.ndarray]:
    """(relative ``bounding_box``, ``mask``) of a FiftyOne ``Detection`` holding this instance mask.

    FiftyOne keeps a mask as the pixels inside its detection's box and infers the image size from
    their ratio, so the box must be whole pixels: the pixel region covering the box and every mask
    pixel (a predicted mask may reach past its box), at most half a pixel per side more than the box.
    The COCO files keep the exact boxes.
    """
    m = decode(rle)
    h, w = m.shape
    x0, y0, x1, y1 = pixel_region(box, w, h)
    ys, xs = np.nonzero(m)
    if len(xs):
        x0, y0 = min(x0, int(xs.min())), min(y0, int(ys.min()))
        x1, y1 = max(x1, int(xs.max()) + 1), max(y1, int(ys.max()) + 1)
    return [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h], m[y0:y1, x0:x1]


def pixel_region(box: Sequence[float], w: int, h: int) -> Tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1) covering a box ``[x, y, w, h]``, inside a w x h image, never empty."""
    x0 = min(max(0, int(math.floor(box[0]))), w - 1)
    y0 = min(max(0, int(math.floor(box[1]))), h - 1)
    x1 = max(min(w, int(math.ceil(box[0] + box[2]))), x0 + 1)
    y1 = max(min(h, int(math.ceil(box[1] + box[3]))), y0 + 1)
    return x0, y0, x1, y1


# ------------------------------------------------------------------ polygons
def _clip(points: np.ndarray, w: float, h: float) -> np.ndarray:
    """Sutherland-Hodgman: the polygon (n, 2) cut to the rectangle [0, w] x [0, h]."""
    for axis, bound, keep_low in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        if len(points) == 0:
            break
        inside = points[:, axis] <= bound if keep_low else points[:, axis] >= bound
        out = []
        prev, prev_in = points[-1], inside[-1]
        for cur, cur_in in zip(points, inside):
            if cur_in != prev_in:  # the edge crosses the bound: add the crossing
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        points = np.asarray(out, dtype=np.float64).reshape(-1, 2)
    return points


def _rasterise(polys: List[np.ndarray], w: int, h: int) -> np.ndarray:
    """Union of polygons (inside the image) as a boolean mask, by pycocotools' rasteriser (COCO's own)."""
    from pycocotools import mask as coco_mask

    rles = coco_mask.frPyObjects([p.ravel().tolist() for p in polys], h, w)
    return coco_mask.decode(coco_mask.merge(rles)).astype(bool)


def polygons_to_rle(polygons: Any, w: int, h: int) -> Tuple[RLE, bool]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (absolute pixels) -> (RLE, whether any part was clipped)."""
    if not isinstance(polygons, (list, tuple)) or not polygons:
        raise MaskError("segmentation is not polygons or RLE", "an empty polygon list")
    flat_total = 0
    polys: List[np.ndarray] = []
    clipped = False
    for poly in polygons:
        if not isinstance(poly, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                       for v in poly):
            raise MaskError("segmentation is not polygons or RLE", "a polygon is not a list of numbers")
        flat_total += len(poly)
        if flat_total > 2 * MAX_POLYGON_POINTS:
            raise MaskError("mask polygon has too many points", f"more than {MAX_POLYGON_POINTS}")
        if len(poly) < 6 or len(poly) % 2:
            raise MaskError("mask polygon with fewer than 3 points",
                            f"{len(poly)} values; a polygon is x1, y1, x2, y2, x3, y3, ...")
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(pts).all():
            raise MaskError("mask polygon has a non-finite coordinate (NaN or infinity)")
        if (pts < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] > h).any():
            clipped = True
            pts = _clip(pts, float(w), float(h))
        if len(pts) >= 3:
            polys.append(pts)
    if not polys:
        raise MaskError("mask outside the image", f"no polygon overlaps the {w}x{h} image")
    return encode(_rasterise(polys, w, h)), clipped


# ------------------------------------------------------------ the one entry
def from_segmentation(seg: Any, w: int, h: int) -> Tuple[RLE, bool]:
    """A COCO ``segmentation`` (polygons, compressed or uncompressed RLE) -> (checked RLE, clipped).

    Raises:
        MaskError: not polygons or RLE; a polygon of fewer than 3 points, with NaN, or too many points;
            RLE whose size is not the image's or whose runs do not add up; a mask outside the image or empty.
    """
    clipped = False
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise MaskError("segmentation is not polygons or RLE", "RLE without a 'size' of [height, width]")
        if list(size) != [h, w]:
            raise MaskError("RLE size differs from the image", f"RLE [h, w] = {list(size)}, image {w}x{h}")
        if isinstance(counts, bytes):
            counts = counts.decode("ascii", "replace")
        if isinstance(counts, str):
            runs = counts_from_string(counts, h * w)
        elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            if any(v < 0 or v > h * w for v in counts):
                raise MaskError("RLE counts do not add up to the image size", "a run is negative or too long")
            runs = list(counts)
        else:
            raise MaskError("segmentation is not polygons or RLE", "RLE 'counts' is neither a string nor integers")
        if sum(runs) != h * w:
            raise MaskError("RLE counts do not add up to the image size", f"{sum(runs)} pixels, image {h * w}")
        rle = {"size": [h, w], "counts": counts_to_string(runs)}
    elif isinstance(seg, (list, tuple)):
        rle, clipped = polygons_to_rle(seg, w, h)
    else:
        raise MaskError("segmentation is not polygons or RLE", f"a {type(seg).__name__}")
    if area(rle) == 0:
        raise MaskError("empty mask", "no pixel of the image is inside it")
    return rle, clipped


def bbox(rle: RLE) -> Optional[List[float]]:
    """Tight ``[x, y, w, h]`` of the mask's pixels (None when empty)."""
    m = decode(rle)
    ys, xs = np.nonzero(m)
    if not len(xs):
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# -------------------------------------------------------------- EXIF frames
def orient(mask: np.ndarray, orientation: int) -> np.ndarray:
    """A mask drawn on the stored pixels, in the displayed frame of an EXIF orientation (what PIL's
    ``exif_transpose`` does to the pixels)."""
    ops = {1: lambda m: m, 2: np.fliplr, 3: lambda m: m[::-1, ::-1], 4: np.flipud, 5: lambda m: m.T,
           6: lambda m: np.rot90(m, -1), 7: lambda m: m.T[::-1, ::-1], 8: lambda m: np.rot90(m, 1)}
    return np.ascontiguousarray(ops.get(orientation, ops[1])(mask))


def to_polygons(mask: np.ndarray) -> List[List[int]]:
    """The outer outlines of a boolean mask (h, w) as COCO polygons ``[[x1, y1, x2, y2, ...], ...]``.

    Each outline follows the pixel edges (pixel ``(x, y)`` is the square ``[x, x + 1] x [y, y + 1]``), so
    pycocotools rasterises the polygons back to exactly the mask with its holes filled (``RETR_EXTERNAL``);
    every non-empty mask has one (a lone pixel is a unit square). Pixels touching at a corner share an outline.
    Cost: about 4 bytes and a few operations per pixel of the mask's bounding box.
    """
    import cv2

    m = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if not len(rows):
        return []
    y0, x0 = int(rows[0]), int(cols[0])
    crop = m[y0:rows[-1] + 1, x0:cols[-1] + 1].view(np.uint8)
    h, w = crop.shape
    # A grid of the pixel corners (even indices) and edge midpoints (odd), at twice the resolution so a gap of one
    # background pixel stays open: a point is set when a mask pixel touches it. OpenCV traces the border of the
    # set points, which is the mask's outline except where it cuts a step diagonally (:func:`_staircase`).
    grid = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    grid[1::2, 1::2] = crop
    rows_of_edges = grid[0::2, 1::2]
    rows_of_edges[:h] |= crop
    rows_of_edges[1:] |= crop
    cols_of_edges = grid[1::2, 0::2]
    cols_of_edges[:, :w] |= crop
    cols_of_edges[:, 1:] |= crop
    corners = grid[0::2, 0::2]
    for dy in (0, 1):
        for dx in (0, 1):
            corners[dy:dy + h, dx:dx + w] |= crop
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [(_staircase(c.reshape(-1, 2).astype(np.int64)) // 2 + (x0, y0)).ravel().tolist()
            for c in contours if len(c) >= 3]


def _staircase(pts: np.ndarray) -> np.ndarray:
    """A closed 8-connected corner chain (n, 2) as the pixel-edge outline: each diagonal step gets the corner
    on the polygon's inside (the diagonal cut across a pixel outside the mask), collinear points dropped."""
    nxt = np.roll(pts, -1, axis=0)
    step = nxt - pts
    diagonal = np.abs(step).sum(1) == 2
    x, y = pts[:, 0], pts[:, 1]
    orientation = np.sign(np.sum(x * nxt[:, 1] - nxt[:, 0] * y))  # shoelace: +1 when the inside is on the left
    # corner (x_next, y) is left of the step when -dx * dy > 0
    left = -step[:, 0] * step[:, 1] * orientation > 0
    corner = np.where(left[:, None], np.stack([nxt[:, 0], y], 1), np.stack([x, nxt[:, 1]], 1))
    reps = 1 + diagonal
    out = np.repeat(pts, reps, axis=0)
    out[(np.cumsum(reps) - 1)[diagonal]] = corner[diagonal]
    direction = np.sign(np.roll(out, -1, axis=0) - out)
    return out[(direction != np.roll(direction, 1, axis=0)).any(1)]
