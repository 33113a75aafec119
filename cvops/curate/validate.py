"""Decode, normalise and validate images and their boxes.

Normalisation (never touching the user's files; changed images are written
into the artifact): EXIF orientation applied (boxes follow when the labels
were made on the stored, unrotated pixels), CMYK / RGBA / palette / 16-bit /
grayscale converted to 8-bit RGB.

Validation, each reason counted and named in the quarantine report:
unreadable or truncated image, image format outside ``ALLOWED_FORMATS``, more
pixels than ``curate.max_pixels`` (read from the header, before decoding),
image size different from the annotation's, non-finite coordinate, zero-area
box, box outside the image (clipped when it overlaps, quarantined when not),
box smaller than ``curate.min_box_size`` after clipping, class not in
``data.classes``, duplicate annotation row; with ``curate.masks``, every
reason :func:`cvops.masks.from_segmentation` names (and masks clipped to the
image are counted).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cvops.curate.sources.items import Box, Item
from cvops.curate.sources.ledger import Ledger
from cvops.media import MAX_JPEG_SCANS, jpeg_file_scans
from cvops.schema import CurateConfig

EXIF_ORIENTATION = 0x0112


@dataclass
class Sample:
    """A validated image ready for the dataset."""

    filepath: Path  # the file training reads (original, or normalised copy)
    item: Item
    width: int
    height: int
    boxes: List[Box]
    sha256: str
    normalised: List[str] = field(default_factory=list)
    phash: int = 0
    sharpness: float = 0.0
    split: Optional[str] = None


def _to_rgb8(img: Any) -> Tuple[Any, List[str]]:
    """8-bit RGB PIL image, and what had to change."""
    from PIL import Image

    done: List[str] = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0))
        img = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
        done.append(f"{mode}->8bit")
        mode = "L"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (114, 114, 114))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg, done + [f"{mode}->RGB (alpha over grey)"]
    if mode != "RGB":
        return img.convert("RGB"), done + [f"{mode}->RGB"]
    return img, done


def _exif_boxes(boxes: List[Box], orientation: int, w: int, h: int) -> List[Box]:
    """Map boxes drawn on stored pixels (w x h) to the displayed orientation."""
    out = []
    for b in boxes:
        x0, y0, x1, y1 = b.x, b.y, b.x + b.w, b.y + b.h
        if orientation == 2:
            x0, x1 = w - x1, w - x0
        elif orientation == 3:
            x0, y0, x1, y1 = w - x1, h - y1, w - x0, h - y0
        elif orientation == 4:
            y0, y1 = h - y1, h - y0
        elif orientation == 5:
            x0, y0, x1, y1 = y0, x0, y1, x1
        elif orientation == 6:
            x0, y0, x1, y1 = h - y1, x0, h - y0, x1
        elif orientation == 7:
            x0, y0, x1, y1 = h - y1, w - x1, h - y0, w - x0
        elif orientation == 8:
            x0, y0, x1, y1 = y0, w - x1, y1, w - x0
        out.append(dataclasses.replace(b, x=x0, y=y0, w=x1 - x0, h=y1 - y0))  # its segmentation: check_masks
    return out


#: Formats a detection dataset holds. Anything else (EPS, PDF, PSD, ICO, SGI, ...) is quarantined
#: before its decoder runs: EPS would hand the file to Ghostscript. (MPO, multi-picture JPEG from
#: cameras, is opened by Pillow's JPEG plugin: it has no opener of its own to name.)
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP")
_OPENERS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
#: The limit of an item that carries none (validation outside the curate stage): curate.max_pixels's default.
MAX_PIXELS = CurateConfig.max_pixels


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def sniff_format(path: Path) -> Optional[str]:
    """The image format a file's first bytes announce (any Pillow knows), without decoding it."""
    from PIL import Image

    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(64)
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # an accept function that cannot handle a short prefix
            continue
    return None


def _file_problem(path: Path) -> Optional[str]:
    import stat

    try:
        return None if stat.S_ISREG(path.stat().st_mode) else "not a regular file"
    except (OSError, ValueError):
        return "image file missing"


def _loose(name: str) -> str:
    """A file name as a person means it: case, surrounding spaces, ``%20`` and Unicode normalisation ignored."""
    import unicodedata
    from urllib.parse import unquote

    return unicodedata.normalize("NFC", unquote(name)).strip().casefold()


@functools.lru_cache(maxsize=16)
def _loose_names(folder: str) -> Dict[str, str]:
    """:func:`_loose` name -> file name of one folder, listed once however many of its images are missing
    (a dataset whose annotations all point at a wrong folder reads each folder once, not once per image)."""
    return {_loose(f.name): f.name for f in Path(folder).iterdir()}


def _near_miss(path: Path) -> str:
    """Where a missing image was looked for, and a file of its folder that differs only in case, spaces,
    ``%20`` or Unicode normalisation (what a hand-edited or another OS's annotation file gets wrong). A hint
    only: the folder's listing is cached for this process."""
    try:
        near = _loose_names(str(path.parent)).get(_loose(path.name))
    except (FileNotFoundError, NotADirectoryError):
        return f"looked for {path}; there is no folder {path.parent}"
    except (OSError, ValueError):
        return f"looked for {path}; its folder cannot be listed"
    return f"looked for {path}" + (f"; the folder has {near!r}: correct the name in the annotations" if near else "")


def open_image(item: Item, out_dir: Path, ledger: Ledger) -> Optional[Tuple[Path, np.ndarray, List[str], List[Box]]]:
    """Decode a still image fully; returns (file to use, RGB array, changes, boxes in displayed frame).

    Any image that cannot be used is one ledger row (its boxes counted there), never an exception:
    a missing file, a format outside :data:`ALLOWED_FORMATS` (named), more pixels than
    ``item.max_pixels`` (read from the header, before decoding), a truncated or corrupt file.
    """
    from PIL import Image

    boxes = list(item.boxes or [])
    n_boxes = len(boxes) + len(item.meta.get("normalized_boxes", []))
    problem = _file_problem(item.path)
    if problem:
        ledger.add("image", item.ref, problem, _near_miss(item.path) if problem == "image file missing" else "",
                   boxes=n_boxes)
        return None
    try:
        arr, changes, boxes = _decode_still(item, boxes)
    except _Reject as r:
        ledger.add("image", item.ref, r.reason, r.detail, boxes=n_boxes)
        return None
    except Exception as e:  # one bad file is one row, whatever its decoder raises
        ledger.add("image", item.ref, "unreadable or truncated image", f"{type(e).__name__}: {e}", boxes=n_boxes)
        return None
    path = item.path
    if changes:
        digest = hashlib.sha256(str(item.path).encode()).hexdigest()[:16]
        path = out_dir / "normalised" / f"{short_stem(item.path.stem)}-{digest}.png"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
        except OSError as e:  # a full disk: this image's row, not the whole curate
            ledger.add("image", item.ref, "normalised copy cannot be written", f"{path}: {e.strerror or e}",
                       boxes=n_boxes)
            return None
    return path, arr, changes, boxes


def short_stem(stem: str, limit: int = 96) -> str:
    """``stem`` cut to at most ``limit`` UTF-8 bytes (on a character boundary): a name cvops derives from
    a file's name, plus a digest, must fit the 255-byte name limit of common file systems."""
    data = stem.encode("utf-8", "surrogateescape")
    return stem if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _open(item: Item) -> Any:
    """The image, header read and checked, not yet decoded."""
    from PIL import Image, UnidentifiedImageError

    limit = item.max_pixels or MAX_PIXELS
    try:
        im = Image.open(item.path, formats=_OPENERS)
    except UnidentifiedImageError:
        fmt = sniff_format(item.path)
        if fmt is None or fmt in ALLOWED_FORMATS:
            raise _Reject("unreadable or truncated image", "not a complete image file of a known format")
        raise _Reject(f"unsupported image format {fmt}",
                      f"cvops reads {', '.join(ALLOWED_FORMATS)}; convert the file to one of them")
    except Image.DecompressionBombError as e:
        raise _Reject("image has more pixels than Pillow's decompression-bomb limit",
                      f"{e} (curate.max_pixels={limit})")
    w, h = im.size
    if w * h > limit:
        im.close()
        raise _Reject("image has more pixels than curate.max_pixels",
                      f"{w}x{h} = {w * h / 1e6:.1f} MP > {limit / 1e6:g} MP; raise curate.max_pixels if such "
                      "images are expected")
    if im.format in ("JPEG", "MPO"):
        scans = jpeg_file_scans(item.path)
        if scans > MAX_JPEG_SCANS:
            im.close()
            raise _Reject("JPEG has too many scans", f"{scans} start-of-scan markers, at most {MAX_JPEG_SCANS} are "
                                                     "decoded (a progressive JPEG has about 10): re-encode it")
    return im


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a malformed EXIF block: the pixels are still good, shown as stored
        return 1


def _decode_still(item: Item, boxes: List[Box]) -> Tuple[np.ndarray, List[str], List[Box]]:
    from PIL import ImageOps

    with _open(item) as im:
        im.load()  # full decode: catches truncated files
        raw_w, raw_h = im.size
        orientation = _orientation(im)
        changes: List[str] = []
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
            changes.append(f"EXIF orientation {orientation} applied")
            # Labels drawn on the stored pixels (their declared size is the stored size) follow the
            # rotation; relative YOLO boxes and labels made on the displayed image stay as they are.
            if item.declared_size == (raw_w, raw_h) and (im.size != (raw_w, raw_h) or orientation in (2, 3, 4)):
                boxes = _exif_boxes(boxes, orientation, raw_w, raw_h)
                item.declared_size = im.size
                item.meta["labels_frame"] = (orientation, raw_w, raw_h)  # masks follow in check_masks
        im, conv = _to_rgb8(im)
        return np.asarray(im), changes + conv, boxes


def check_boxes(item: Item, boxes: List[Box], w: int, h: int, classes: Optional[Sequence[str]],
                class_map: Dict[str, str], min_size: float, clip: bool, ledger: Ledger) -> Tuple[List[Box], int]:
    """Valid boxes (clipped where needed) and how many were clipped."""
    kept: List[Box] = []
    seen = set()
    clipped = 0
    for b in boxes:
        label = class_map.get(b.label, b.label)
        if not all(math.isfinite(v) for v in (b.x, b.y, b.w, b.h)):
            ledger.add("box", b.origin, "box has a non-finite coordinate (NaN or infinity)",
                       f"[{b.x}, {b.y}, {b.w}, {b.h}]", boxes=1)
            continue
        if classes is not None and label not in classes:
            ledger.add("box", b.origin, "class not in data.classes", f"class={label!r}", boxes=1)
            continue
        if not (b.w > 0 and b.h > 0):
            ledger.add("box", b.origin, "zero-area box", f"w={b.w:g} h={b.h:g}", boxes=1)
            continue
        x0, y0, x1, y1 = b.x, b.y, b.x + b.w, b.y + b.h
        cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
        if cx1 <= cx0 or cy1 <= cy0:
            ledger.add("box", b.origin, "box outside the image", f"[{x0:g},{y0:g},{x1:g},{y1:g}] in {w}x{h}", boxes=1)
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            if not clip:
                ledger.add("box", b.origin, "box extends outside the image (curate.clip_boxes=false)",
                           f"[{x0:g},{y0:g},{x1:g},{y1:g}] in {w}x{h}", boxes=1)
                continue
            clipped += 1
        if cx1 - cx0 < min_size or cy1 - cy0 < min_size:
            ledger.add("box", b.origin, "box smaller than curate.min_box_size",
                       f"{cx1 - cx0:.2f}x{cy1 - cy0:.2f} < {min_size:g}", boxes=1)
            continue
        key = (label, round(cx0, 3), round(cy0, 3), round(cx1, 3), round(cy1, 3))
        if key in seen:
            ledger.add("box", b.origin, "duplicate annotation row", f"{label} {list(key[1:])}", boxes=1)
            continue
        seen.add(key)
        kept.append(dataclasses.replace(b, label=label, x=cx0, y=cy0, w=cx1 - cx0, h=cy1 - cy0))
    return kept, clipped


def yolo_boxes(item: Item, w: int, h: int) -> List[Box]:
    """YOLO's relative boxes (and segment polygons) in pixels of the w x h image."""
    out = []
    for label, cx, cy, bw, bh, origin, *segment in item.meta.get("normalized_boxes", []):
        seg = segment[0] if segment else None
        poly = [[v * (w if i % 2 == 0 else h) for i, v in enumerate(seg)]] if seg else None
        out.append(Box(label, (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h, origin, segmentation=poly))
    return out


def check_masks(item: Item, boxes: List[Box], w: int, h: int, ledger: Ledger) -> Tuple[List[Box], int]:
    """Checked instance masks (``curate.masks``): boxes whose segmentation is usable, each with its
    whole-image RLE in ``mask``, and how many masks were clipped to the image.

    An instance without a segmentation, or whose segmentation cannot be used (see
    :func:`cvops.masks.from_segmentation`), is a box row naming the reason. Masks drawn on the
    stored pixels of an EXIF-rotated image are rotated as its boxes were.
    """
    from cvops import masks

    frame = item.meta.get("labels_frame")
    kept: List[Box] = []
    clipped = 0
    for b in boxes:
        if b.segmentation is None:
            ledger.add("box", b.origin, "instance without a mask (curate.masks=true)",
                       "give it a segmentation, or set curate.masks=false to train boxes only", boxes=1)
            continue
        fw, fh = (frame[1], frame[2]) if frame else (w, h)
        try:
            rle, was_clipped = masks.from_segmentation(b.segmentation, fw, fh)
        except masks.MaskError as e:
            ledger.add("box", b.origin, e.reason, e.detail, boxes=1)
            continue
        if frame:
            rle = masks.encode(masks.orient(masks.decode(rle), frame[0]))
        clipped += was_clipped
        kept.append(dataclasses.replace(b, segmentation=None, mask=rle))
    return kept, clipped


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the low 8x8 DCT block against its median."""
    import cv2

    small = cv2.resize(gray.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    block = cv2.dct(small)[:8, :8].flatten()
    bits = block > np.median(block[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def sharpness(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())
