"""File types cvops reads as images, videos or archives (stdlib only: used while fingerprinting every command).

Each is the one list: curate reads these images, the monitor's folder windows
and the drift reference see the same ones, so an image that is curated is
never invisible to monitoring.
"""

#: Image files, by lower-case suffix: JPEG (also ``.jpe``, ``.jfif``; ``.mpo``, a camera's multi-picture JPEG),
#: PNG, BMP, WebP and TIFF; the formats the decoders accept (``cvops.curate.validate.ALLOWED_FORMATS``).
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".bmp", ".tif", ".tiff", ".webp"})
#: Video files, by lower-case suffix.
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm"})
#: Archives a source may be, by lower-case name ending (zip and tar are extracted; 7z and rar are refused with
#: a message saying to extract them first).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")

#: Most scans (start-of-scan markers) of a JPEG cvops decodes, in curate and in serve. Each scan of a
#: progressive JPEG walks the whole image again and libjpeg accepts any number: 1 MB of repeated tiny scans
#: kept a core busy for 23 s. Encoders write 1 (baseline) to about 10 (progressive), a few more with an
#: embedded thumbnail or MPO frames.
MAX_JPEG_SCANS = 64


def jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers in JPEG bytes: an upper bound of its scans (entropy-coded data cannot hold the
    marker, metadata rarely does)."""
    return data.count(b"\xff\xda")


def jpeg_file_scans(path: object) -> int:
    """:func:`jpeg_scans` of a file, read in 1 MiB blocks."""
    n, tail = 0, b""
    with open(path, "rb") as f:  # type: ignore[call-overload]
        for block in iter(lambda: f.read(1 << 20), b""):
            n += jpeg_scans(tail + block)
            tail = block[-1:] if block[-1:] == b"\xff" else b""
    return n
