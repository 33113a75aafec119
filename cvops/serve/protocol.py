"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol with two bounds it lacks.

- **The request line and headers are at most** :data:`MAX_HEAD_BYTES` (64 KiB, what
  common reverse proxies allow): uvicorn's httptools protocol appends URL and
  header bytes without a limit, so two connections streaming an endless URL or
  header grew the server by 650 MiB. Past the limit the parser stops, uvicorn
  answers 400 and closes the connection.
- **They must arrive within** ``serve.header_timeout_s`` (20 s) of the connection opening (or of
  the previous request on a kept-alive connection): a connection that sends
  nothing, or a header byte now and then (slowloris), is answered 408 and closed
  instead of holding a file descriptor forever (1,100 such connections under
  ``ulimit -n 1024`` made every valid request fail).

The body has its own bounds in :mod:`cvops.serve.upload` (``serve.max_upload_mb``,
``serve.body_timeout_s``; an early answer closes the connection). A module-level
class: ``--workers N`` pickles the uvicorn config into each worker process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Most bytes of request line + headers of one request.
MAX_HEAD_BYTES = 64 * 1024
#: The environment variable carrying ``serve.header_timeout_s`` into every worker process (set by
#: :func:`cvops.serve.server.serve`).
HEAD_TIMEOUT_ENV = "CVOPS_SERVE_HEADER_TIMEOUT_S"


def head_timeout_s() -> float:
    """``serve.header_timeout_s`` of this server (20 s when unset or unreadable)."""
    try:
        value = float(os.environ.get(HEAD_TIMEOUT_ENV, "20"))
    except ValueError:
        return 20.0
    return value if value > 0 else 20.0

_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 42\r\n" \
                  b"connection: close\r\n\r\nthe request headers did not arrive in time"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request's line and headers.

    The size is counted as bytes arrive (httptools buffers a header until its value ends, so counting in
    its callbacks would come too late): every byte received while a request's head is incomplete is head.
    """

    _in_head = True  # between two requests (or before the first) every byte belongs to a head
    _head_bytes = 0
    _head_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        transport: Any = self.transport
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not transport.is_closing():
            self.logger.info("closing a connection whose request line and headers passed %d bytes", MAX_HEAD_BYTES)
            self.send_400_response(f"the request line and headers are over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # no timer while the app works on the request: after its answer uvicorn's keep-alive timeout closes an
        # idle connection, and the next request's first byte arms the head timer again (on_message_begin)
        self._in_head, self._head_bytes = True, 0

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(head_timeout_s(), self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        transport: Any = self.transport
        if self._in_head and transport is not None and not transport.is_closing():
            self.logger.info("closing a connection whose request headers did not arrive within %g s", head_timeout_s())
            transport.write(_TIMEOUT_ANSWER)
            transport.close()
