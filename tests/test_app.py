"""`cvops app` serves the curated dataset, checked in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_app_shows_the_curated_samples_in_chromium(cvops, tmp_path):
    r = cvops("project=appcheck", "stages=[curate]", "data.synthetic.num_images=9", "data.synthetic.videos=0",
              "data.synthetic.empty_fraction=0")
    assert r.returncode == 0, r.stdout + r.stderr
    port = _free_port()
    app = cvops.popen("app", "project=appcheck", "stages=[curate]", "data.synthetic.num_images=9",
                      "data.synthetic.videos=0", "data.synthetic.empty_fraction=0", "--port", str(port))
    try:
        t0 = time.time()
        line = ""
        while time.time() - t0 < 120 and "FiftyOne App:" not in line:
            line = app.stdout.readline()
            assert line or app.poll() is None, "cvops app exited early"
        name = re.search(r"dataset (\S+) \((\d+) samples; curated for this config", line)
        assert name, line
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                              "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=120).stdout
        assert name.group(1) in dom  # the dataset is open
        assert dom.count("<canvas") >= int(name.group(2)) == 9  # one rendered tile per sample
    finally:
        app.terminate()
        app.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_app_shows_the_monitor_edge_cases_in_chromium(cvops, tmp_path):
    """The review dataset the monitor fills opens in the App with one tile per edge case."""
    import cv2
    import numpy as np

    from cvops.export.runtime import Detections
    from cvops.fo import connect
    from cvops.monitor.profile import Seen
    from cvops.monitor.stage import to_review

    project = f"appcheck{abs(hash(tmp_path.name)) % 10**8}"
    name = f"{project}-review"  # what `cvops app ... --review` opens
    if connect().dataset_exists(name):
        connect().delete_dataset(name)
    edge = []
    for i in range(4):
        frame = np.full((80, 120, 3), 40 * i, np.uint8)
        d = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.25], np.float32), np.array([i % 3]))
        s = Seen(f"frame-{i}", {"width": 120, "height": 80, "max_score": 0.25}, d, frame=frame)
        edge.append((s, ["low_confidence"]))
    assert to_review(name, edge, ["circle", "square", "triangle"], tmp_path, "fp", "test") == 4
    port = _free_port()
    app = cvops.popen("app", f"project={project}", "--review", "--port", str(port))
    try:
        t0 = time.time()
        line = ""
        while time.time() - t0 < 120 and "FiftyOne App:" not in line:
            line = app.stdout.readline()
            assert line or app.poll() is None, "cvops app exited early"
        assert f"dataset {name} (4 samples" in line, line
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                              "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=120).stdout
        assert name in dom and dom.count("<canvas") >= 4
    finally:
        app.terminate()
        app.wait(timeout=30)
    assert cv2.imread(str(tmp_path / "edge_cases" / "00000.jpg")) is not None
