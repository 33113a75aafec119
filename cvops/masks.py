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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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
    """The compressed string of run lengths (pycocotools' encoding), all runs at once: one numpy pass per
    5-bit group (at most 13) instead of a Python loop per run."""
    if len(counts) < 128:  # a few runs: numpy's per-call cost is more than the loop's
        return _counts_to_string_loop(counts)
    v = np.asarray(counts, dtype=np.int64).reshape(-1)
    if v.size > 3:
        v = v.copy()
        v[3:] = v[3:] - np.asarray(counts, dtype=np.int64)[1:-2]  # runs after the third: the difference to i - 2
    chars = np.zeros((v.size, 13), np.uint8)  # 0: no character
    active = np.ones(v.size, bool)
    for g in range(13):
        c = v & 0x1F
        v = v >> 5  # arithmetic: a negative value keeps its sign bits
        more = np.where(c & 0x10, v != -1, v != 0) & active
        chars[:, g] = np.where(active, 48 + np.where(more, c | 0x20, c), 0)
        active = more
        if not active.any():
            break
    flat = chars.ravel()
    return flat[flat > 0].tobytes().decode("ascii")


def _counts_to_string_loop(counts: Sequence[int]) -> str:
    """:func:`counts_to_string` one run at a time."""
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
    """Compressed RLE of a 2-D boolean mask (h, w) (:meth:`InstanceMasks.rle` of its pixels' region)."""
    m = np.asarray(mask, dtype=bool)
    return InstanceMasks.from_array(m[None]).rle(0)


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


class InstanceMasks:
    """The instance masks of one image in original pixels, each kept as the pixels of its own region.

    A model's masks are small next to a large image: a full ``(n, height, width)`` array of 100 masks of a
    40 MP upload is 4 GB. Here instance ``i`` is a bool crop placed at ``(x0, y0)`` (:meth:`region`), zero
    elsewhere, so memory and every operation (area, RLE, polygons) scale with the masks, not the image.
    Masks from a model (:func:`upscale_instances`) are computed from its input-resolution masks when first
    read and kept while they fit in ``cache_bytes`` (computed again when read again beyond that), so a
    hostile upload whose every instance covers the whole image costs one mask at a time, not ``n``.
    Read like an array where that is cheap: ``len``, ``shape``, ``m[i]`` / iteration give one full mask at a
    time; :meth:`to_array` stacks them all (small images, tests).
    """

    dtype = np.dtype(bool)
    #: crops kept once computed, in bytes (beyond it a crop is computed again when read again)
    cache_bytes = 32 * 2**20

    def __init__(self, height: int, width: int, regions: Sequence[Tuple[int, int]] = (),
                 crops: Sequence[np.ndarray] = (), *, count: Optional[int] = None,
                 source: Optional[Callable[[int], Tuple[int, int, np.ndarray]]] = None) -> None:
        """Either ``regions`` and ``crops`` (eager), or ``count`` masks computed by ``source(i) -> (x0, y0,
        crop)`` on demand."""
        self.height, self.width = int(height), int(width)
        if source is None:
            if len(regions) != len(crops):
                raise ValueError(f"InstanceMasks: {len(regions)} regions for {len(crops)} crops")
            count = len(crops)
        self._n = int(count or 0)
        self._source = source
        self._cached: Dict[int, Tuple[int, int, np.ndarray]] = {}
        self._cached_bytes = 0
        self._areas: Optional[np.ndarray] = None
        for i, ((x, y), c) in enumerate(zip(regions, crops)):
            c = np.asarray(c, bool)
            if c.ndim != 2 or x < 0 or y < 0 or x + c.shape[1] > self.width or y + c.shape[0] > self.height:
                raise ValueError(f"InstanceMasks: a {c.shape} crop at ({x}, {y}) is outside {self.width}x{self.height}")
            self._cached[i] = (int(x), int(y), c)

    @classmethod
    def from_array(cls, masks: np.ndarray) -> "InstanceMasks":
        """From full masks ``(n, height, width)``: each cropped to the bounding box of its pixels."""
        m = np.asarray(masks, bool)
        regions, crops = [], []
        for one in m:
            x0, y0, crop = _tight(one)
            regions.append((x0, y0))
            crops.append(crop)
        return cls(m.shape[1], m.shape[2], regions, crops)

    def region(self, i: int) -> Tuple[int, int, np.ndarray]:
        """``(x0, y0, crop)`` of instance ``i``: its pixels are ``crop[y, x]`` at ``(x0 + x, y0 + y)``."""
        if not 0 <= i < self._n:
            raise IndexError(f"instance {i} of {self._n}")
        hit = self._cached.get(i)
        if hit is not None:
            return hit
        x0, y0, crop = self._source(i)  # type: ignore[misc]  # not cached: a lazy instance
        if self._cached_bytes + crop.nbytes <= self.cache_bytes:
            self._cached[i] = (x0, y0, crop)
            self._cached_bytes += crop.nbytes
        return x0, y0, crop

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self._n, self.height, self.width)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        """Instance ``i`` as a full (height, width) bool mask."""
        x, y, c = self.region(i)
        out = np.zeros((self.height, self.width), bool)
        out[y:y + c.shape[0], x:x + c.shape[1]] = c
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to_array(self) -> np.ndarray:
        """All masks as one (n, height, width) bool array (mind the size on large images)."""
        return np.stack(list(self)) if len(self) else np.zeros((0, self.height, self.width), bool)

    def areas(self) -> np.ndarray:
        """Pixels of each mask, (n,) int64 (counted once)."""
        if self._areas is None:
            self._areas = np.array([np.count_nonzero(self.region(i)[2]) for i in range(self._n)], np.int64)
        return self._areas

    def rle(self, i: int) -> RLE:
        """Compressed COCO RLE of instance ``i`` over the whole image (equal to :func:`encode` of ``self[i]``),
        computed from its region alone."""
        x0, y0, crop = self.region(i)
        h, w = self.height, self.width
        if not crop.any():
            return {"size": [h, w], "counts": counts_to_string([h * w]) if h * w else ""}
        ch, cw = crop.shape
        padded = np.zeros((ch + 2, cw), bool)
        padded[1:-1] = crop
        # where the value changes inside each column (rows r-1 -> r of the crop, zero above and below it),
        # in column-major order: the flat positions of every change over the whole image
        cols, rows = np.nonzero((padded[1:] != padded[:-1]).T)
        pos = (x0 + cols).astype(np.int64) * h + (y0 + rows)
        if ch == h:  # a column ending in 1 on the image's last row and the next starting in 1 on its first:
            uniq, n = np.unique(pos, return_counts=True)  # no change there (the two positions coincide)
            pos = uniq[n % 2 == 1]
        pos = pos[pos < h * w]  # a change after the last pixel is the end, not a run
        runs = np.diff(np.concatenate([[0], pos, [h * w]]))
        return {"size": [h, w], "counts": counts_to_string(runs.tolist() if len(runs) < 128 else runs)}

    def polygons(self, i: int) -> List[List[int]]:
        """COCO polygons of instance ``i`` in image pixels (:func:`to_polygons` of its region)."""
        x0, y0, crop = self.region(i)
        return [(np.asarray(p).reshape(-1, 2) + (x0, y0)).ravel().tolist() for p in to_polygons(crop)]


def _tight(mask: np.ndarray) -> Tuple[int, int, np.ndarray]:
    """(x0, y0, crop) of a bool mask cropped to the bounding box of its pixels ((0, 0, 0x0) when empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return 0, 0, np.zeros((0, 0), bool)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return x0, y0, np.ascontiguousarray(mask[y0:y1, x0:x1])


def upscale_instances(masks: np.ndarray, new_size: Tuple[int, int], size: Tuple[int, int]) -> InstanceMasks:
    """Masks at a model's input resolution back to an image's pixels, each computed on its own region.

    Args:
        masks: (n, H, W) 0/1 masks of the letterboxed input; the image is the top-left ``new_size``
            (new_w, new_h) of them, the rest is padding.
        size: the original (width, height).

    Each mask's top-left ``new_h x new_w`` is resized bilinearly to (width, height) and thresholded at 0.5
    (what mmdet does to its mask logits) - but only over the part of the image its pixels can reach (their
    bounding box, widened by two source pixels for the interpolation), so the cost grows with the mask; and
    only when first read (:class:`InstanceMasks` keeps the input-resolution masks, at most ``max_det x H x W``
    bytes whatever the upload's size).
    """
    w, h = int(size[0]), int(size[1])
    nw, nh = int(new_size[0]), int(new_size[1])
    src_all = np.asarray(masks)[:, :nh, :nw]

    def one(i: int) -> Tuple[int, int, np.ndarray]:
        src = src_all[i]
        rows, cols = np.flatnonzero(src.any(1)), np.flatnonzero(src.any(0))
        if not len(rows):
            return 0, 0, np.zeros((0, 0), bool)
        if (nw, nh) == (w, h):
            return _tight(src > 0)
        fx, fy = nw / w, nh / h  # source pixels per image pixel
        # image pixel X samples source x = (X + 0.5) * fx - 0.5: the X whose samples can touch columns c0..c1
        X0 = max(0, int(math.floor((cols[0] - 2 + 0.5) / fx - 0.5)))
        X1 = min(w, int(math.ceil((cols[-1] + 2 + 0.5) / fx - 0.5)) + 1)
        Y0 = max(0, int(math.floor((rows[0] - 2 + 0.5) / fy - 0.5)))
        Y1 = min(h, int(math.ceil((rows[-1] + 2 + 0.5) / fy - 0.5)) + 1)
        x0, y0, crop = _tight(_bilinear_mask(np.ascontiguousarray(src, np.float32), fx, fy, X0, X1, Y0, Y1))
        return (X0 + x0, Y0 + y0, crop) if crop.size else (0, 0, crop)

    return InstanceMasks(h, w, count=len(src_all), source=one)


def resize_weights(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """(n_out, n_in) weights of torch's bilinear ``interpolate`` (``align_corners=False``) along one axis:
    output ``o`` samples input ``max(0, (o + 0.5) * scale - 0.5)`` between its two neighbours (the last input
    repeats past the end). Each row sums to 1 and no weight is negative."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    w = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - lam)
    np.add.at(w, (rows, i1), lam)
    return w


def logit(p: float) -> float:
    """The logit whose sigmoid is ``p`` (``mask_thr_binary`` in logit space)."""
    p = min(max(float(p), 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def logits_to_instances(logits: np.ndarray, stride: int, scale: Tuple[float, float], size: Tuple[int, int],
                        thr: float = 0.5, rows_per_chunk: int = 512) -> InstanceMasks:
    """Mask logits at a model's prototype resolution to instance masks of the original image, as mmdet's
    RTMDet-Ins computes them (``_bbox_mask_post_process`` with ``rescale=True``):

    1. bilinear x ``stride`` (the letterboxed input canvas, padding included);
    2. bilinear to ``ceil(H1 / scale_x) x ceil(W1 / scale_y)`` (mmdet's order of the scale factors), keeping the
       top-left ``height x width`` (the rest is padding);
    3. ``sigmoid > thr``, i.e. ``logit > logit(thr)``: in logit space, after both resizes.

    Both resizes are linear and separable, so step 1+2 along each axis is one small matrix (output pixels x
    prototype cells, :func:`resize_weights`); an instance's mask is ``My @ L @ Mx.T`` over the part of the image
    its positive cells reach (its weights are a convex combination of the cells, so no other pixel can pass the
    threshold). Memory and time grow with the mask, not the upload; each mask is computed when first read.

    Args:
        logits: (n, h, w) float mask logits (graph output ``mask_logits``, rows below ``num_dets``).
        stride: the prototypes' stride (x ``stride`` gives the input canvas).
        scale: the letterbox scale (new_w / w, new_h / h).
        size: the original (width, height).
        thr: the probability threshold (mmdet's ``mask_thr_binary``).
    """
    w, h = int(size[0]), int(size[1])
    src_all = np.asarray(logits, np.float32)
    n, lh, lw = src_all.shape if src_all.ndim == 3 else (0, 1, 1)
    h1, w1 = lh * int(stride), lw * int(stride)
    out_h, out_w = math.ceil(h1 / scale[0]), math.ceil(w1 / scale[1])
    my = (resize_weights(min(out_h, h), h1, h1 / out_h) @ resize_weights(h1, lh, 1.0 / stride)).astype(np.float32)
    mx = (resize_weights(min(out_w, w), w1, w1 / out_w) @ resize_weights(w1, lw, 1.0 / stride)).astype(np.float32)
    t = logit(thr)

    def reach(m: np.ndarray, cells: np.ndarray) -> Tuple[int, int]:
        hit = np.flatnonzero((m[:, cells] > 0).any(1))
        return (int(hit[0]), int(hit[-1]) + 1) if len(hit) else (0, 0)

    def one(i: int) -> Tuple[int, int, np.ndarray]:
        src = src_all[i]
        pos = src > t
        rows, cols = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
        if not len(rows):
            return 0, 0, np.zeros((0, 0), bool)
        y0, y1 = reach(my, rows)
        x0, x1 = reach(mx, cols)
        right = src @ mx[x0:x1].T  # (h, x1 - x0)
        crop = np.empty((y1 - y0, x1 - x0), bool)
        for r in range(y0, y1, rows_per_chunk):
            e = min(y1, r + rows_per_chunk)
            crop[r - y0:e - y0] = my[r:e] @ right > t
        cx, cy, tight = _tight(crop)
        return (x0 + cx, y0 + cy, tight) if tight.size else (0, 0, tight)

    return InstanceMasks(h, w, count=n, source=one)


def _sample_axis(lo: int, hi: int, scale: float, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and weights of image pixels ``lo..hi-1`` along one axis, as ``cv2.resize``
    (INTER_LINEAR) samples them: ``x = (X + 0.5) * scale - 0.5``, clamped to the source's edges."""
    f = (np.arange(lo, hi, dtype=np.float64) + 0.5) * scale - 0.5
    i = np.floor(f).astype(np.int64)
    a = (f - i).astype(np.float32)
    low, high = i < 0, i >= n - 1
    a[low | high] = 0.0
    i = np.clip(i, 0, n - 1)
    return i, np.minimum(i + 1, n - 1), a


def _bilinear_mask(src: np.ndarray, fx: float, fy: float, X0: int, X1: int, Y0: int, Y1: int,
                   rows_per_chunk: int = 512) -> np.ndarray:
    """The pixels [Y0:Y1, X0:X1] of ``cv2.resize(src, ..., INTER_LINEAR) >= 0.5`` at source-per-image scale
    (fx, fy), computed for that region only, a chunk of rows at a time (floats for one chunk, bools for all)."""
    xi, xj, ax = _sample_axis(X0, X1, fx, src.shape[1])
    yi, yj, ay = _sample_axis(Y0, Y1, fy, src.shape[0])
    out = np.empty((Y1 - Y0, X1 - X0), bool)
    for r in range(0, Y1 - Y0, rows_per_chunk):
        s = slice(r, r + rows_per_chunk)
        top = src[yi[s]]
        bottom = src[yj[s]]
        t = top[:, xi] * (1 - ax) + top[:, xj] * ax
        b = bottom[:, xi] * (1 - ax) + bottom[:, xj] * ax
        out[s] = t * (1 - ay[s, None]) + b * ay[s, None] >= 0.5
    return out
