"""Encoding test images into upload bytes."""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from PIL import Image


def encode(bgr: np.ndarray, ext: str = ".jpg") -> bytes:
    """A BGR array as JPEG/PNG bytes (OpenCV)."""
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return buf.tobytes()


def pil_bytes(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    """A PIL image as bytes in ``fmt`` (modes and metadata OpenCV cannot write: 16-bit, CMYK, EXIF)."""
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR image with a gradient background and a few filled rectangles (the serve tests' uploads)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    for _ in range(4):
        x, y = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(5, w // 3)), y + int(rng.integers(5, h // 3))), color, -1)
    return img
