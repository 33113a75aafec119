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
