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
