"""Networking helpers for tests that start servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(proc, url: str, log_file, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200, failing with the server's output if ``proc`` exits or time runs out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log_file.read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.2)


def wait_ready(proc, url: str, timeout: float = 120.0) -> None:
    """Wait until ``url`` (a server's ``/readyz``) answers 200, failing with the output of ``proc`` (started
    with ``stdout=PIPE``) if it exits or time runs out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready after {timeout:.0f} s"
        time.sleep(0.3)
