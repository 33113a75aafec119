"""`cvops app` serves the curated dataset, checked in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from helpers.net import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _app_dom(cvops, tmp_path, *args: str) -> tuple:
    """Start ``cvops app <args>``, wait for its URL line, render the page in headless Chromium.

    Returns:
        (the "FiftyOne App: ..." line, the rendered DOM).
    """
    port = free_port()
    app = cvops.popen("app", *args, "--port", str(port))
    try:
        t0 = time.time()
        line = ""
        while time.time() - t0 < 120 and "FiftyOne App:" not in line:
            line = app.stdout.readline()
            assert line or app.poll() is None, "cvops app exited early"
        url = re.search(r"FiftyOne App: (\S+)", line).group(1).replace("localhost", "127.0.0.1")
        dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
                              "--virtual-time-budget=20000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        return line, dom
    finally:
        app.terminate()
        app.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_app_shows_the_curated_samples_in_chromium(cvops, tmp_path):
    args = ("project=appcheck", "stages=[curate]", "data.synthetic.num_images=9", "data.synthetic.videos=0",
            "data.synthetic.empty_fraction=0")
    r = cvops(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    line, dom = _app_dom(cvops, tmp_path, *args)
    name = re.search(r"dataset (\S+) \((\d+) samples; curated for this config", line)
    assert name, line
    assert name.group(1) in dom  # the dataset is open
    assert dom.count("<canvas") >= int(name.group(2)) == 9  # one rendered tile per sample


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_app_shows_the_monitor_edge_cases_in_chromium(cvops, tmp_path):
    """The review dataset the monitor fills opens in the App with one tile per edge case."""
    import cv2
    import numpy as np

    from cvops.detector.runtime import Detections
    from cvops.fo import connect
    from cvops.drift.profile import Seen
    from cvops.monitor.stage import to_review

    from cvops.annotate.review import review_dataset
    from cvops.store import FolderStore

    project = f"appcheck{abs(hash(tmp_path.name)) % 10**8}"
    name = review_dataset(project, FolderStore(cvops.store).id)  # what `cvops app ... --review` opens
    if connect().dataset_exists(name):
        connect().delete_dataset(name)
    edge = []
    for i in range(4):
        frame = np.full((80, 120, 3), 40 * i, np.uint8)
        d = Detections(np.array([[10, 10, 50, 50]], np.float32), np.array([0.25], np.float32), np.array([i % 3]))
        s = Seen(f"frame-{i}", {"width": 120, "height": 80, "max_score": 0.25}, d, frame=frame)
        edge.append((s, ["low_confidence"]))
    assert to_review(name, edge, ["circle", "square", "triangle"], tmp_path, "fp", "test") == 4
    line, dom = _app_dom(cvops, tmp_path, f"project={project}", "--review")
    assert f"dataset {name} (4 samples" in line, line
    assert name in dom and dom.count("<canvas") >= 4
    assert cv2.imread(str(tmp_path / "edge_cases" / "00000.jpg")) is not None


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_app_opens_the_confident_predictions_view_with_every_prediction_one_click_away(cvops, tmp_path):
    """Predictions are stored down to evaluate.score_thr (mAP needs them); the App opens the evaluate
    stage's saved view of those at or above its confusion threshold; the dataset keeps them all."""
    from cvops.fo import connect

    args = ("recipe=quickstart", "project=appview", "stages=[curate,train,evaluate]", "data.synthetic.num_images=30",
            "data.synthetic.videos=0", "model.image_size=[128,128]", "train.max_epochs=1", "tracker=none",
            "evaluate.score_thr=0.001", "evaluate.confusion_score_thr=0.02",
            "train.scale_jitter=null")  # a 1-epoch model with the quickstart's narrow jitter predicts nothing yet
    r = cvops(*args, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ev = cvops.run_jsons()[-1]["stages"]["evaluate"]["metrics"]
    view_name, field = ev["app_view"], ev["predictions_field"]
    assert view_name == f"{field} confidence >= 0.02"
    ds = connect().load_dataset(cvops.run_jsons()[-1]["stages"]["curate"]["metrics"]["dataset_name"])
    every = ds.values(f"{field}.detections.confidence", unwind=True)
    shown = ds.load_saved_view(view_name).values(f"{field}.detections.confidence", unwind=True)
    assert every and min(every) < 0.02 and all(c >= 0.02 for c in shown)  # (a 1-epoch model scores low)
    assert len(shown) == sum(c >= 0.02 for c in every) < len(every)

    line, dom = _app_dom(cvops, tmp_path, *args)
    from fiftyone.core.utils import to_slug

    assert f"?view={to_slug(view_name)}" in line and f"view '{view_name}'" in line, line
    assert ds.name in dom and dom.count("<canvas") >= 3
    all_line, _ = _app_dom(cvops, tmp_path, *args, "--all")
    assert "?view=" not in all_line and "view '" not in all_line, all_line
