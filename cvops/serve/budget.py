"""The memory a request may hold, bounded: its upload (:class:`UploadBudget`) and its decode (:class:`DecodeBudget`).

**Upload budget.** The bodies being received, or held until their answer, all
together stay under ``serve.upload_memory_mb``; a request that would pass it is
answered 503 at once (waiting would hold its connection and its bytes).

**Decode budget.** A decode reserves, before any pixel is decoded, an estimate
of its peak memory from the image header (:func:`decode_cost`)::

    width * height * (2 * stored + work + 3) + 2 MiB

where ``stored`` is the bytes per pixel Pillow keeps for the decoded mode (1 for
1/L/P, 2 for I;16, 4 for RGB, RGBA, CMYK, LA, I, F, ...), counted twice for the
EXIF-rotated copy; ``work`` the numpy intermediates of the conversion to 8-bit
(3 for RGB, 2 for 1/L/LA, 5 for I;16, 9 for I/F, 7 for the others: a Pillow
RGB copy + its array); 3 the BGR array the model gets; 2 MiB the decoder's
own buffers. Measured (peak RSS of a decode, 6 MP): RGB JPEG 80.0 MiB for an
estimate of 82.1, RGBA PNG and CMYK JPEG 103.0 for 105.0, 16-bit PNG 45.9 for
70.7 (``tests/adversarial/test_serve_hostile.py`` checks it). A 40 MP 16-bit
PNG thus reserves about 480 MB, a 40 MP RGB JPEG 560 MB. After decoding the
reservation shrinks to the BGR array (held until the request is answered).
The sum of reservations in flight stays under ``decode_memory_mb``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from cvops.serve.errors import ApiError

MiB = 2**20

#: Bytes per pixel Pillow stores for a decoded mode (its 8-bit multi-band modes use 4).
STORED_BPP = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Bytes per pixel of the numpy intermediates of :func:`cvops.serve.decode.to_bgr` (see the module docstring).
WORK_BPP = {"RGB": 3, "1": 2, "L": 2, "LA": 2, "I;16": 5, "I;16L": 5, "I;16B": 5, "I;16N": 5, "I": 9, "F": 9}
#: Decoder state and row buffers, on top of the pixels.
DECODER_BYTES = 2 * 2**20
#: Bytes per image pixel that answering one instance mask may need (a mask model), on top of the decoded
#: pixels: its region (1), the RLE's padded copy and column changes (3); polygons add their outline grid at
#: twice the resolution and OpenCV's copy of it (5). Held in the decode budget until the answer.
MASK_WORK_BPP = {"rle": 4, "none": 4, "polygon": 9}


def decode_cost(width: int, height: int, mode: str) -> int:
    """The estimated peak bytes of decoding a ``width x height`` image of a Pillow ``mode`` into BGR."""
    return int(width) * int(height) * (2 * STORED_BPP.get(mode, 4) + WORK_BPP.get(mode, 7) + 3) + DECODER_BYTES


class DecodeBudget:
    """The memory of the decodes in flight, bounded (see the module docstring).

    Args:
        total_mb: the budget, in MiB (``serve.decode_memory_mb``, checked by :func:`cvops.serve.limits.check`).
        wait_s: how long a decode waits for budget before it is refused with 503 (``serve.decode_wait_s``).
    """

    def __init__(self, total_mb: float, wait_s: float) -> None:
        self.total_mb, self.total, self.wait_s = total_mb, int(total_mb * MiB), float(wait_s)
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator["Reservation"]:
        """Hold ``nbytes`` of the budget for the ``with`` block (``what`` names the image in errors).

        Raises:
            ApiError: 413 when ``nbytes`` exceeds the whole budget, 503 when the
                budget stays full for ``wait_s``.
        """
        if nbytes > self.total:
            raise ApiError(413, "decode_memory", f"decoding the {what} needs about {nbytes / MiB:.1f} MB, more than "
                                                 f"the whole decode budget of {self.total_mb:g} MB "
                                                 "(serve.decode_memory_mb): send a smaller image or raise "
                                                 "serve.decode_memory_mb")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.used + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    retry = max(1, int(round(self.wait_s)))
                    raise ApiError(503, "decode_busy", f"the server is decoding other images: the {what} needs "
                                                       f"about {nbytes / MiB:.1f} MB of the {self.total_mb:g} MB "
                                                       f"decode budget (serve.decode_memory_mb), not free within "
                                                       f"{self.wait_s:g} s (serve.decode_wait_s): retry in "
                                                       f"{retry} s", headers={"Retry-After": str(retry)})
                self._cond.wait(left)
            self.used += nbytes
        held = Reservation(self, nbytes)
        try:
            yield held
        finally:
            held.shrink(0)

    def _give_back(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


class Reservation:
    """Bytes held in a :class:`DecodeBudget`; :meth:`shrink` gives part of them back early."""

    def __init__(self, budget: DecodeBudget, nbytes: int) -> None:
        self.budget, self.nbytes = budget, nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` held (no-op when already smaller)."""
        if nbytes < self.nbytes:
            self.budget._give_back(self.nbytes - nbytes)
            self.nbytes = nbytes


class UploadBudget:
    """The request bodies in flight (received, or held until their answer), bounded: ``serve.upload_memory_mb``.

    Used from the event loop only (bodies are read there), so a plain counter; a request that would pass the
    budget is answered 503 at once (waiting would hold its connection and its bytes).

    Args:
        total_mb: the budget, in MiB (checked by :func:`cvops.serve.limits.check`).
    """

    def __init__(self, total_mb: float) -> None:
        self.total_mb, self.total, self.used = total_mb, int(total_mb * MiB), 0

    def take(self, held: list[int], nbytes: int) -> None:
        """Add ``nbytes`` to one request's share (``held[0]``), or refuse the request.

        Raises:
            ApiError: 503 (``Retry-After: 1``) when the budget would be passed.
        """
        if self.used + nbytes > self.total:
            others = (self.used - held[0]) / MiB
            raise ApiError(503, "upload_busy", f"the server holds {others:.1f} MB of other uploads; with this one's "
                                               f"{(held[0] + nbytes) / MiB:.1f} MB that passes its "
                                               f"{self.total_mb:g} MB (serve.upload_memory_mb): retry in 1 s",
                           headers={"Retry-After": "1", "Connection": "close"})
        self.used += nbytes
        held[0] += nbytes

    def give_back(self, held: list[int]) -> None:
        """Return one request's whole share (``held[0]``) once it is answered."""
        self.used -= held[0]
        held[0] = 0
