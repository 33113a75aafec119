"""A private S3-compatible server for the tests: moto's server mode (a real HTTP endpoint speaking the S3
API, conditional writes included) in a subprocess on a free port, with its own buckets.

The tests reach it the way users reach theirs: ``AWS_ENDPOINT_URL`` and the standard credential variables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Dict

from helpers.net import free_port


class S3Server:
    """``moto_server`` on 127.0.0.1:<free port> until :meth:`stop`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server did not listen on {self.port}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> Dict[str, str]:
        """The variables a cvops process needs to use this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket(self) -> str:
        """A new empty bucket; returns its name."""
        import s3fs

        name = f"cvops-{uuid.uuid4().hex[:10]}"
        s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing").mkdir(name)
        return name

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def use(server: S3Server, monkeypatch) -> None:
    """Point this process's S3 clients at ``server`` (and forget filesystems made for another endpoint)."""
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    from cvops import remote

    remote._fs.cache_clear()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
