"""Bearer-token authentication of the application (``serve.token_env``).

With a token set, every HTTP path except :data:`OPEN_PATHS` (liveness and
readiness probes, which orchestrators call without credentials) needs
``Authorization: Bearer <token>``; a request without it is answered 401 before
its body is read. The token is compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

from starlette.responses import JSONResponse

#: Paths answered without the token: the probes.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class BearerAuth:
    """ASGI middleware: every HTTP path except :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.

    Args:
        app: the wrapped ASGI application.
        token: the expected token.
        on_reject: called with the path of each refused request.
    """

    def __init__(self, app: Any, token: str, on_reject: Callable[[str], None]) -> None:
        self.app = app
        self.token = token.encode()
        self.on_reject = on_reject

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the raw ASGI headers carry the right bearer token."""
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        self.on_reject(scope["path"])
        response = JSONResponse({"error": "missing or wrong bearer token: send the header "
                                          "'Authorization: Bearer <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
