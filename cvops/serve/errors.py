"""How the server answers what goes wrong: a refused request (4xx), a failure of its own (500).

A refused request raises :class:`ApiError`; the application answers it as
``{"error": message}`` and counts it under its ``reason``. Anything else that
escapes is caught by :class:`CatchAll`, logged under an error id, and answered
500 with that id only: no exception text or library path reaches a client.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Awaitable, Callable

from starlette.responses import JSONResponse

logger = logging.getLogger("cvops.serve")

#: nginx's "client closed request": recorded, never sent to anyone.
DISCONNECTED = 499


class ApiError(Exception):
    """A request the server refuses (4xx) or fails (5xx), answered as ``{"error": message}``.

    Args:
        status: the HTTP status code.
        reason: a short machine-readable reason, the ``reason`` label of
            ``cvops_errors_total`` and the ``error`` of the logged record.
        message: the human-readable explanation sent back (no internal detail).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers


def error_id() -> str:
    """A short id tying a 500 answer to its detail in the server log."""
    return uuid.uuid4().hex[:12]


_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?|[\w.-]+\.(?:py|pyx|cpp|cc|c|h|so)\b")


def clean(text: Any, limit: int = 200) -> str:
    """A library's error text safe to send back: object reprs and file paths removed, cut to ``limit``."""
    text = _PATH.sub("<path>", _OBJECT_REPR.sub("<object>", str(text)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CatchAll:
    """ASGI middleware: any exception nothing else handled becomes a JSON 500 without detail.

    The detail goes to the server log under an error id the answer names.

    Args:
        app: the wrapped ASGI application.
        on_error: called with the path of each such request.
    """

    def __init__(self, app: Any, on_error: Callable[[str], None]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            eid = error_id()
            logger.exception("unexpected error (error id %s) on %s %s", eid, scope.get("method"), scope.get("path"))
            self.on_error(scope.get("path", ""))
            if not started:
                response = JSONResponse({"error": f"internal server error; error id {eid} in the server log"},
                                        status_code=500)
                await response(scope, receive, send)
