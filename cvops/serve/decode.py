"""Decoding an uploaded image: JPEG or PNG bytes -> a BGR ``uint8`` array, its header checked first.

:func:`open_image` reads the header only and refuses what is not a JPEG or PNG,
what claims more than ``serve.max_pixels`` pixels or an extreme aspect ratio,
and a JPEG with more scans than :data:`cvops.media.MAX_JPEG_SCANS`; the caller
reserves the decode's memory (:mod:`cvops.serve.budget`) and only then
:func:`load_bgr` decodes the pixels, with the image's EXIF orientation applied.
Every refusal is an :class:`~cvops.serve.errors.ApiError` naming the limit and
the setting that moves it.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from cvops.media import MAX_JPEG_SCANS, jpeg_scans
from cvops.serve.errors import ApiError, clean

logger = logging.getLogger("cvops.serve")

#: How to send an image, said in every answer that refuses the form of a request.
HOW = "send multipart/form-data with a file field 'image', or a raw body with Content-Type image/jpeg or image/png"


def sniff(data: bytes) -> str | None:
    """``"JPEG"`` or ``"PNG"`` from the first bytes, else ``None``."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return None


def to_bgr(image: Any) -> np.ndarray:
    """A decoded PIL image as a contiguous ``(H, W, 3)`` BGR ``uint8`` array.

    Gray, palette, alpha (dropped), CMYK and 16-bit images are all converted; a
    16-bit image keeps its 8 most significant bits.

    Args:
        image: a loaded ``PIL.Image.Image``.

    Returns:
        The BGR array.
    """
    import cv2

    mode = image.mode
    if mode.startswith("I;16"):
        gray = (np.asarray(image) >> 8).astype(np.uint8)
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    if mode in ("I", "F"):  # 32-bit integer (16-bit PNG in older Pillow) or float
        a = np.clip(np.asarray(image), 0, 255 if mode == "F" else 65535)
        if mode == "I":
            a >>= 8
        return np.ascontiguousarray(cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_GRAY2BGR))
    if mode in ("1", "L", "LA"):
        gray = np.asarray(image if mode == "L" else image.convert("L"))
        return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # a contiguous copy; numpy's rgb[..., ::-1] copy costs ~40x more


def open_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> tuple[Any, str]:
    """Read the header of JPEG or PNG bytes and check it; no pixel is decoded yet.

    Args:
        data: the uploaded bytes.
        max_pixels: the largest ``width * height`` accepted.
        max_aspect_ratio: the largest long side / short side accepted (None: any).

    Returns:
        ``(image, "JPEG" | "PNG")``: the opened, not yet loaded, ``PIL.Image.Image``.

    Raises:
        ApiError: 400 for empty, unrecognised or unreadable data and extreme aspect
            ratios; 413 when the header declares more than ``max_pixels`` pixels.
    """
    from PIL import Image

    if not data:
        raise ApiError(400, "empty_body", f"the request carries no image bytes; {HOW}")
    fmt = sniff(data)
    if fmt is None:
        raise ApiError(400, "bad_image", f"the {len(data)} bytes sent are not a JPEG or PNG image "
                                         f"(unrecognised signature {data[:8].hex()})")
    scans = jpeg_scans(data) if fmt == "JPEG" else 0
    if scans > MAX_JPEG_SCANS:
        raise ApiError(400, "too_many_scans", f"the JPEG image has {scans} scans; at most {MAX_JPEG_SCANS} are "
                                              "decoded (a progressive JPEG has about 10): re-encode it")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError as e:
        raise _too_many(fmt, max_pixels, f"too large to decode ({clean(e)})") from e
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        if _truncated(e):
            raise ApiError(400, "truncated_image", f"the {fmt} image ({len(data)} bytes) ends inside its header "
                                                   f"(truncated upload?): {clean(e)}") from e
        raise ApiError(400, "bad_image", f"cannot read the {fmt} image header: {clean(e)}") from e
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ApiError(400, "bad_image", f"the {fmt} image declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise _too_many(fmt, max_pixels, f"{w}x{h} = {w * h} pixels")
    ratio = max(w, h) / min(w, h)
    if max_aspect_ratio is not None and ratio > max_aspect_ratio:
        raise ApiError(400, "aspect_ratio", f"the {fmt} image is {w}x{h}, an aspect ratio of {ratio:.6g}:1; the "
                                            f"limit is {max_aspect_ratio:g}:1 (serve.max_aspect_ratio): crop or "
                                            "tile the image, or raise serve.max_aspect_ratio")
    return image, fmt


def _too_many(fmt: str, max_pixels: int, what: str) -> ApiError:
    return ApiError(413, "too_many_pixels", f"the {fmt} image is {what}; the limit is {max_pixels} pixels "
                                            "(width x height, serve.max_pixels): send a smaller image")


def load_bgr(image: Any, fmt: str, size: int) -> np.ndarray:
    """Decode an opened image completely into BGR ``uint8``, its EXIF orientation applied.

    Raises:
        ApiError: 400 when the data does not decode completely (truncated, corrupt).
    """
    from PIL import Image, ImageOps

    try:
        image.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES is off by default)
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"the {fmt} image is too large to decode: {clean(e)}") from e
    except Exception as e:
        truncated = _truncated(e)
        raise ApiError(400, "truncated_image" if truncated else "bad_image",
                       f"the {fmt} image ({size} bytes) does not decode completely"
                       f"{' (truncated upload?)' if truncated else ''}: {clean(e)}") from e
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as e:  # a broken EXIF block: keep the stored orientation
        logger.debug("ignoring unreadable EXIF orientation: %s", e)
    try:
        return to_bgr(image)
    except Exception as e:  # a mode Pillow decodes but cannot convert
        raise ApiError(400, "bad_image", f"cannot convert the {fmt} image (mode {image.mode}) to 8-bit "
                                         f"color: {clean(e)}") from e


def decode_image(data: bytes, max_pixels: int, max_aspect_ratio: float | None = None) -> tuple[np.ndarray, str]:
    """Decode JPEG or PNG bytes completely, refusing oversize images before decoding pixels.

    Args:
        data: the uploaded bytes.
        max_pixels: the largest ``width * height`` accepted.
        max_aspect_ratio: the largest long side / short side accepted (None: any).

    Returns:
        ``(bgr, mime type)``: the image as BGR ``uint8`` with its EXIF
        orientation applied, and ``"image/jpeg"`` or ``"image/png"``.

    Raises:
        ApiError: see :func:`open_image` and :func:`load_bgr`.
    """
    image, fmt = open_image(data, max_pixels, max_aspect_ratio)
    return load_bgr(image, fmt, len(data)), mime(fmt)


def mime(fmt: str) -> str:
    """The MIME type of a format :func:`sniff` names."""
    return "image/png" if fmt == "PNG" else "image/jpeg"


def _truncated(error: BaseException) -> bool:
    """Whether a PIL decoding error says the data ended early."""
    return isinstance(error, EOFError) or "truncated" in str(error).lower()
