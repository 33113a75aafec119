"""Decode, normalise and validate images and their boxes.

Normalisation (never touching the user's files; changed images are written
into the artifact): EXIF orientation applied (boxes follow when the labels
were made on the stored, unrotated pixels), CMYK / RGBA / palette / 16-bit /
grayscale converted to 8-bit RGB.

Validation, each reason counted and named in the quarantine report:
unreadable or truncated image, image size different from the annotation's,
zero-area box, box outside the image (clipped when it overlaps, quarantined
when not), box smaller than ``curate.min_box_size`` after clipping, class not
in ``data.classes``, duplicate annotation row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cvops.curate.sources import Box, Item, Ledger

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
        out.append(Box(b.label, x0, y0, x1 - x0, y1 - y0, b.origin))
    return out


def open_image(item: Item, out_dir: Path, ledger: Ledger) -> Optional[Tuple[Path, np.ndarray, List[str], List[Box]]]:
    """Decode a still image fully; returns (file to use, RGB array, changes, boxes in displayed frame)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    boxes = list(item.boxes or [])
    n_boxes = len(boxes) + len(item.meta.get("normalized_boxes", []))
    if not item.path.is_file():
        ledger.add("image", item.ref, "image file missing", "", boxes=n_boxes)
        return None
    try:
        with Image.open(item.path) as im:
            im.load()  # full decode: catches truncated files
            raw_w, raw_h = im.size
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            changes: List[str] = []
            if orientation not in (1, None):
                im = ImageOps.exif_transpose(im)
                changes.append(f"EXIF orientation {orientation} applied")
                # Labels drawn on the stored pixels (their declared size is the stored size) follow the
                # rotation; relative YOLO boxes and labels made on the displayed image stay as they are.
                if item.declared_size == (raw_w, raw_h) and (im.size != (raw_w, raw_h) or orientation in (2, 3, 4)):
                    boxes = _exif_boxes(boxes, orientation, raw_w, raw_h)
                    item.declared_size = im.size
            im, conv = _to_rgb8(im)
            changes += conv
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        ledger.add("image", item.ref, "unreadable or truncated image", f"{type(e).__name__}: {e}", boxes=n_boxes)
        return None
    path = item.path
    if changes:
        digest = hashlib.sha256(str(item.path).encode()).hexdigest()[:16]
        path = out_dir / "normalised" / f"{item.path.stem}-{digest}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    return path, arr, changes, boxes


def check_boxes(item: Item, boxes: List[Box], w: int, h: int, classes: Optional[Sequence[str]],
                class_map: Dict[str, str], min_size: float, clip: bool, ledger: Ledger) -> Tuple[List[Box], int]:
    """Valid boxes (clipped where needed) and how many were clipped."""
    kept: List[Box] = []
    seen = set()
    clipped = 0
    for b in boxes:
        label = class_map.get(b.label, b.label)
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
        kept.append(Box(label, cx0, cy0, cx1 - cx0, cy1 - cy0, b.origin))
    return kept, clipped


def yolo_boxes(item: Item, w: int, h: int) -> List[Box]:
    return [Box(label, (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h, origin)
            for label, cx, cy, bw, bh, origin in item.meta.get("normalized_boxes", [])]


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
