"""Reading a prediction request: its image bytes (raw or multipart) and its ``masks`` parameter, within bounds.

The body is refused (413) as soon as it passes ``serve.max_upload_mb`` (on
``Content-Length`` and again while reading), must arrive within
``serve.body_timeout_s`` (else 408), and its bytes count against the upload
budget while they are held (:class:`cvops.serve.budget.UploadBudget`; 503 when
it is full). A client that leaves mid-body is recorded as 499, never answered.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from cvops.detector.runtime import MaskFormat
from cvops.serve.budget import MiB, UploadBudget
from cvops.serve.decode import HOW
from cvops.serve.errors import DISCONNECTED, ApiError, clean

logger = logging.getLogger("cvops.serve")

#: The multipart file field that carries the image.
FIELD = "image"
JPEG_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})
PNG_TYPES = frozenset({"image/png"})
#: Content types a multipart image part may declare (browsers and curl often send none or octet-stream).
PART_TYPES = JPEG_TYPES | PNG_TYPES | {"application/octet-stream", ""}
MULTIPART = "multipart/form-data"
MASK_PARAM = "masks"
MASK_CHOICES = "rle (default: COCO RLE), polygon or none"


def media_type(value: str | None) -> str:
    """The lower-case ``type/subtype`` of a Content-Type value ("" when missing)."""
    return (value or "").split(";", 1)[0].strip().lower()


def mask_format(query: Any) -> MaskFormat:
    """The ``masks`` query parameter of a predict request (``rle`` when absent).

    Raises:
        ApiError: 400 when it is given more than once or is not a :class:`MaskFormat` value.
    """
    values = query.getlist(MASK_PARAM)
    if not values:
        return MaskFormat.RLE
    if len(values) > 1:
        raise ApiError(400, "bad_parameter", f"the query parameter '{MASK_PARAM}' is given {len(values)} times; "
                                             f"give it once: {MASK_PARAM}={MASK_CHOICES}")
    try:
        return MaskFormat(values[0])
    except ValueError:
        raise ApiError(400, "bad_parameter", f"invalid value {clean(values[0], 40)!r} of the query parameter "
                                             f"'{MASK_PARAM}'; valid: {MASK_CHOICES}") from None


class UploadReader:
    """Reads the image bytes of prediction requests, each counted against one shared upload budget.

    Args:
        max_upload_mb: the largest body accepted (``serve.max_upload_mb``).
        body_timeout_s: how long a whole body may take to arrive (``serve.body_timeout_s``).
        budget: the bytes of all bodies held at once (``serve.upload_memory_mb``).
    """

    def __init__(self, max_upload_mb: float, body_timeout_s: float, budget: UploadBudget) -> None:
        self.max_upload_mb, self.body_timeout_s, self.budget = max_upload_mb, body_timeout_s, budget
        self.max_bytes = int(max_upload_mb * MiB)

    async def image_bytes(self, request: Request, media: str, held: list[int]) -> bytes:
        """The image bytes of a raw or multipart request (their memory counted in ``held``).

        Raises:
            ApiError: 415 for another content type, 400 for a malformed or empty body, and what
                :meth:`body` raises.
        """
        if media not in JPEG_TYPES | PNG_TYPES | {MULTIPART}:
            got = f"Content-Type {clean(media, 80)!r}" if media else "no Content-Type"
            raise ApiError(415, "unsupported_media_type", f"unsupported media type: the request has {got}; {HOW}")
        body = await self.body(request, held)
        if media != MULTIPART:
            return body
        if not body:
            raise ApiError(400, "empty_body", f"the request body is empty; {HOW}")
        self.budget.take(held, len(body))  # the parsed part is a second copy

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
        except Exception as e:  # MultiPartException / HTTPException(400) / parser errors
            detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e) or type(e).__name__
            raise ApiError(400, "bad_multipart", f"malformed multipart/form-data body: {clean(detail)}; {HOW}") from e
        try:
            named = form.get("source")  # the request's source (cvops.serve.sources), a text field
            if isinstance(named, str):
                request.state.form_source = named[:1000]
            part = form.get(FIELD)
            if not isinstance(part, UploadFile):
                what = "has no field" if part is None else "has a text field, not a file,"
                raise ApiError(400, "missing_image", f"the multipart body {what} named '{FIELD}'; {HOW}")
            part_media = media_type(part.content_type)
            if part_media not in PART_TYPES:
                raise ApiError(415, "unsupported_media_type",
                               f"unsupported media type: the '{FIELD}' part has Content-Type "
                               f"{clean(part_media, 80)!r}; send image/jpeg or image/png")
            return await part.read()
        finally:
            await form.close()

    async def body(self, request: Request, held: list[int]) -> bytes:
        """The request body within ``body_timeout_s``, refused (413) as soon as it exceeds ``max_upload_mb``, its
        bytes counted in ``held`` against the upload budget as they arrive (503 when it is full).

        Raises:
            ApiError: 400 (a bad ``Content-Length``), 408, 413, 503, or 499 when the client left.
        """
        max_bytes, body_timeout_s = self.max_bytes, self.body_timeout_s
        limit = f"the limit is {self.max_upload_mb:g} MB ({max_bytes} bytes, serve.max_upload_mb): send a smaller file"
        length = request.headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError(400, "bad_request", f"invalid Content-Length header {clean(length, 40)!r}") from None
            if declared > max_bytes:
                raise ApiError(413, "too_large", f"the request body is {declared} bytes; {limit}")
        body = bytearray()
        try:
            with anyio.fail_after(body_timeout_s):
                async for chunk in request.stream():
                    self.budget.take(held, len(chunk))
                    body += chunk
                    if len(body) > max_bytes:
                        raise ApiError(413, "too_large", f"the request body is over {max_bytes} bytes; {limit}")
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive within {body_timeout_s:g} s "
                                                f"({len(body)} bytes received; serve.body_timeout_s): send it "
                                                "in one go, or raise serve.body_timeout_s") from None
        except ClientDisconnect:
            logger.info("client disconnected after %d bytes of its request body", len(body))
            raise ApiError(DISCONNECTED, "client_disconnect",
                           f"the client disconnected after {len(body)} bytes of the body") from None
        return bytes(body)
