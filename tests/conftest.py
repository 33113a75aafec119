"""Shared fixtures: an isolated working dir + store, and a way to run `cvops`."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from helpers.mongo import PrivateMongod  # noqa: E402

# Tests get their own FiftyOne database: a mongod of their own on a free port, reached through
# FIFTYONE_DATABASE_URI (set before anything imports fiftyone; subprocesses inherit it). FiftyOne's
# embedded database finds a running mongod by port, so a test run must never sit on the default one.
# CVOPS_TEST_DATABASE_URI points the tests at another server instead (it must be a throwaway one).
_DB_ROOT = Path(tempfile.mkdtemp(prefix="cvops-tests-fiftyone-"))
if os.environ.get("CVOPS_TEST_DATABASE_URI"):
    os.environ["FIFTYONE_DATABASE_URI"] = os.environ["CVOPS_TEST_DATABASE_URI"]
else:
    MONGOD = PrivateMongod(_DB_ROOT / "mongo")
    atexit.register(shutil.rmtree, _DB_ROOT, True)  # runs after stop (atexit is last in, first out)
    atexit.register(MONGOD.stop)
    os.environ["FIFTYONE_DATABASE_URI"] = MONGOD.uri
os.environ["FIFTYONE_DATABASE_DIR"] = str(_DB_ROOT / "embedded")  # for tests that start an embedded one on purpose
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
# the machine-local cache (composed configs, an object store's artifacts) of this test run, not the user's
os.environ["CVOPS_CACHE_DIR"] = str(_DB_ROOT / "cache")
ROOT = TESTS.parent
HELPER = TESTS / "helpers" / "run_cvops.py"


class Cvops:
    """Runs `cvops` (or `cvops` with the test stages) in a scratch directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.store = workdir / "store"
        self.log = workdir / "stage_calls.log"
        self.env: Dict[str, str] = {
            **os.environ,
            "CVOPS_STORE": str(self.store),
            "CVOPS_TEST_LOG": str(self.log),
            "WANDB_MODE": "offline",
            "HYDRA_FULL_ERROR": "0",
        }

    def cmd(self, args: List[str], test_stages: bool = False) -> List[str]:
        entry = [str(HELPER)] if test_stages else ["-m", "cvops"]
        return [sys.executable, *entry, *args]

    def __call__(self, *args: str, test_stages: bool = False, timeout: float = 300,
                 env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(list(args), test_stages), cwd=self.workdir, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str, test_stages: bool = False, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(list(args), test_stages), cwd=self.workdir, env={**self.env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def calls(self) -> List[str]:
        return self.log.read_text().split("\n")[:-1] if self.log.exists() else []

    def run_jsons(self) -> List[dict]:
        files = sorted(self.workdir.glob("outputs/**/run.json"), key=lambda p: p.stat().st_mtime)
        return [json.loads(p.read_text()) for p in files]

    def logs(self) -> str:
        """Every run dir's ``cvops.log`` (the details the console leaves out), oldest first."""
        files = sorted(self.workdir.glob("outputs/**/cvops.log"), key=lambda p: p.stat().st_mtime)
        return "".join(p.read_text(errors="replace") for p in files)


@pytest.fixture
def cvops(tmp_path: Path) -> Cvops:
    return Cvops(tmp_path)


@pytest.fixture
def test_stages():
    """Register the test stage implementations in this process."""
    sys.path.insert(0, str(TESTS))
    from helpers.stages import register, unregister

    register()
    yield
    unregister()


@pytest.fixture(scope="session")
def s3():
    """One S3-compatible server (moto's, a real HTTP endpoint) for the session; each test takes its own bucket
    (``s3.bucket()``) and reaches it through ``s3.env`` / ``helpers.s3.use``."""
    from helpers.s3 import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny exported RTMDet (untrained, 128x128), built once per session for the serve tests."""
    from helpers.tiny_model import make_onnx

    return make_onnx(tmp_path_factory.mktemp("tiny-onnx-128"))


@pytest.fixture(scope="session")
def detector(model_path: Path):
    from cvops.detector.runtime import OnnxDetector

    return OnnxDetector(model_path)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """One real Label Studio server for the session (skipped outside CI when it is not installed)."""
    from helpers.labelstudio import LabelStudio

    server = LabelStudio(tmp_path_factory.mktemp("label-studio"))
    yield server
    server.stop()


@pytest.fixture
def project() -> Iterator[str]:
    """A fresh project name; its FiftyOne datasets (curated versions, review datasets) are deleted afterwards."""
    import uuid

    from cvops.fo import connect

    name = f"p{uuid.uuid4().hex[:8]}"
    yield name
    fo = connect()
    for ds in fo.list_datasets():
        if ds.startswith(name):
            fo.delete_dataset(ds)
