"""Object storage through fsspec: URLs such as ``s3://bucket/prefix`` for data and the artifact store.

Credentials and the endpoint come from where every S3 tool reads them: the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server
such as MinIO or moto, ``AWS_PROFILE``, ...) or ``storage_options`` (``paths.store_options`` for the
store), which are passed to the filesystem as they are (s3fs: ``endpoint_url``, ``key``, ``secret``,
``client_kwargs``, ...). Nothing here knows about S3 beyond its error codes: any fsspec protocol works
for reading; the store's conditional writes need S3 semantics (``If-None-Match`` / ``If-Match``).
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from typing import Any, Dict, Mapping, Optional, Tuple

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: Any) -> bool:
    """True for ``s3://...``-style strings (a protocol, then ``://``); plain paths and ``file://`` are local."""
    m = _URL.match(str(path)) if path is not None else None
    return bool(m) and m.group(1).lower() != "file"


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


@functools.lru_cache(maxsize=8)
def _fs(protocol: str, options: str) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(protocol, **json.loads(options))
    except ImportError as e:
        raise OSError(f"cannot open {protocol}:// storage: {e}; for s3:// install s3fs (pip install s3fs)") from e
    except (TypeError, ValueError) as e:  # an option the filesystem does not take
        raise OSError(f"cannot open {protocol}:// storage with options {json.loads(options)}: {e}; check "
                      "paths.store_options (passed to the filesystem as they are)") from e


def filesystem(url: str, options: Optional[Mapping[str, Any]] = None) -> Tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it (bucket/key, no protocol).

    One filesystem object per (protocol, options) in a process: s3fs keeps its connection pool there.
    """
    protocol = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    fs = _fs(protocol, json.dumps(dict(options or {}), sort_keys=True, default=str))
    return fs, fs._strip_protocol(url)


def precondition_failed(e: BaseException) -> bool:
    """True when a write was refused because its condition did not hold (HTTP 412: ``If-None-Match: *`` on an
    existing key, ``If-Match`` with an old ETag) or a concurrent conditional write won (409)."""
    if isinstance(e, FileExistsError):  # s3fs maps a refused If-None-Match to this
        return True
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            err = resp.get("Error", {})
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def safe_rel(rel: Any) -> bool:
    """True for a relative path that stays below the folder it is joined to: no absolute path, no ``..``,
    ``.`` or empty part, no backslash or NUL (an object key is any string; a key ``a/../../x`` written into a
    folder would land outside it)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def listing(url: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Every object under ``url`` (a prefix, or one object): relative key -> {size, etag}."""
    fs, path = filesystem(url, options)
    found = fs.find(path, detail=True)
    out: Dict[str, Dict[str, Any]] = {}
    for key, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(key, path) if key != path else posixpath.basename(key)
        out[rel] = {"size": info.get("size"), "etag": str(info.get("ETag") or info.get("etag") or info.get("mtime"))}
    return out
