"""Values read from annotation files, and written into the report.

A field value that cannot be used is ``None`` (the reader makes it a row that says
why); only a file that cannot be read at all raises :class:`~cvops.errors.SourceError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Tuple

from cvops.errors import SourceError


def printable(s: Any) -> str:
    """Text safe for the CSV/JSON reports (undecodable file-name bytes shown escaped)."""
    return str(s).encode("utf-8", "backslashreplace").decode("utf-8")


def short(v: Any, n: int = 60) -> str:
    """A value as a report shows it: its repr, cut to ``n`` characters."""
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def decode_text(data: bytes, errors: str = "replace") -> str:
    """A label or list file's text: UTF-8 (a byte order mark dropped), or UTF-16 with its byte order mark
    (what Windows PowerShell 5's ``>`` writes). With ``errors="replace"`` bytes that do not decode become
    U+FFFD, so their line fails to parse and is a row of its own; ``"strict"`` raises UnicodeDecodeError."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", errors=errors)
    return data.decode("utf-8-sig", errors=errors)


def num(v: Any) -> Optional[float]:
    """A number from a JSON/XML field (int, float or numeric text), else None."""
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            return float(v.strip())
    except (ValueError, OverflowError):
        return None
    return None


def id_key(v: Any) -> Any:
    """An id usable as a key (int, or text; '7' and 7 are the same id), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip():
        s = v.strip()
        return int(s) if s.isascii() and s.isdigit() else s
    return None


def label_name(v: Any) -> Optional[str]:
    """A class name: non-empty text (numbers are written as text), else None."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return None
    s = str(v).strip()
    return s or None


def parse_size(w: Any, h: Any) -> Tuple[bool, Optional[Tuple[int, int]]]:
    """(well formed, (w, h) or None for unknown). 0x0 and missing values mean unknown."""
    if w is None or h is None or (isinstance(w, str) and not w.strip()) or (isinstance(h, str) and not h.strip()):
        return True, None
    nw, nh = num(w), num(h)
    if nw is None or nh is None or not (math.isfinite(nw) and math.isfinite(nh)):
        return False, None
    if nw == nh == 0:
        return True, None
    if nw <= 0 or nh <= 0 or nw != int(nw) or nh != int(nh):
        return False, None
    return True, (int(nw), int(nh))


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: {what} is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise SourceError(f"{path}: {what} cannot be read ({e.strerror})") from e
