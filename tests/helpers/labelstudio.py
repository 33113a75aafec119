"""A real Label Studio server for the tests: its own venv (``./install.sh --with-label-studio``), SQLite in a
temporary folder, a free port on 127.0.0.1, a user with a known API key."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from helpers.net import free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]
EMAIL = "annotator@example.com"


def executable() -> Path:
    venv = Path(os.environ.get("CVOPS_LABEL_STUDIO_VENV", REPO / ".venv-label-studio"))
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        why = f"Label Studio is not installed ({exe} missing): run ./install.sh --with-label-studio"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs it: a missing server is a broken install, not a skip
        pytest.skip(why)
    return exe


class LabelStudio:
    """``url``, ``key`` (a legacy API token of :data:`EMAIL`), and REST calls playing the annotator."""

    def __init__(self, root: Path) -> None:
        exe = executable()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = uuid.uuid4().hex
        data = root / "label-studio"
        data.mkdir(parents=True, exist_ok=True)
        self.log = root / "label-studio.log"
        env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}  # Label Studio reads both
        env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data), SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
                   COLLECT_ANALYTICS="false")
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [str(exe), "start", "--port", str(self.port), "--internal-host", "127.0.0.1", "--no-browser",
                 "--data-dir", str(data), "--username", EMAIL, "--password", uuid.uuid4().hex,
                 "--user-token", self.key, "--enable-legacy-api-token"],
                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(root))
        wait_for_http(self.proc, f"{self.url}/health", self.log, timeout=300)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.key}"}, timeout=30)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    # ---------------------------------------------------------------- the annotator's side
    def tasks(self, project: int) -> List[Dict[str, Any]]:
        r = self.http.get("/api/tasks", params={"project": project, "fields": "all", "page_size": 1000})
        r.raise_for_status()
        return r.json()["tasks"]

    def annotate(self, task: int, result: List[Dict[str, Any]], skip: bool = False) -> Dict[str, Any]:
        r = self.http.post(f"/api/tasks/{task}/annotations", json={"result": result, "was_cancelled": skip})
        assert r.status_code == 201, r.text
        return r.json()

    def delete_project(self, project: int) -> None:
        assert self.http.delete(f"/api/projects/{project}").status_code == 204
