"""Monitoring a team acts on: ``cvops alerts`` rules that promtool accepts, refused alert blocks, and real
Prometheus + Alertmanager (Debian's packages, on loopback) alerting on a real ``cvops serve``: drift on one
camera while the other is fine, then no traffic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from helpers.net import free_port, wait_ready

TOOLS = ("promtool", "prometheus", "prometheus-alertmanager")


def _tool(name: str) -> str:
    """The binary, or a skip outside CI (``.ci/run`` installs Debian's prometheus and prometheus-alertmanager)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: .ci/run installs Debian's prometheus and prometheus-alertmanager")
        pytest.skip(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")
    return path


def test_every_shipped_recipe_gives_rules_promtool_accepts(tmp_path):
    import yaml

    from cvops.monitor.alerts import rules
    from cvops.recipes import available_recipes
    from cvops.session import compose_job

    promtool = _tool("promtool")
    names = available_recipes()
    assert {"quickstart", "bccd"} <= set(names)
    for name in names:
        cfg = compose_job([f"recipe={name}"], check_missing=False)
        doc = rules(cfg, [f"recipe={name}"])
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        alerts = [x for x in doc["groups"][0]["rules"] if "alert" in x]
        assert {a["alert"] for a in alerts} >= {"CvopsDrift", "CvopsErrorRate", "CvopsLatencyP95", "CvopsNoTraffic",
                                                "CvopsPrecisionDrop", "CvopsClassMix"}
        assert all(a["labels"]["project"] == str(cfg.project) and a["labels"]["severity"] for a in alerts)
        assert all(f"recipe={name}" in a["annotations"]["runbook"] for a in alerts
                   if a["alert"] in ("CvopsDrift", "CvopsPrecisionDrop", "CvopsClassMix", "CvopsLatencyP95"))
    # an alert switched off is left out; the thresholds are the recipe's
    cfg = compose_job(["recipe=quickstart", "monitor.alerts.class_mix.enabled=false",
                       "monitor.alerts.latency_p95_ms.threshold=250"], check_missing=False)
    doc = rules(cfg, ["recipe=quickstart"])
    got = {x["alert"]: x for x in doc["groups"][0]["rules"] if "alert" in x}
    assert "CvopsClassMix" not in got and got["CvopsLatencyP95"]["expr"].endswith("> 0.25")


@pytest.mark.parametrize("override, key", [
    ("monitor.alerts.drift.duration=-5m", "monitor.alerts.drift.duration"),
    ("monitor.alerts.window=5 minutes", "monitor.alerts.window"),
    ("monitor.alerts.error_rate.threshold=1.5", "monitor.alerts.error_rate.threshold"),
    ("monitor.alerts.no_traffic.severity=a b", "monitor.alerts.no_traffic.severity"),
    ("+monitor.alerts.queue_depth.threshold=3", "queue_depth"),  # an unknown metric
    ("serve.max_sources=0", "serve.max_sources"),
])
def test_a_bad_alert_block_is_refused_at_preflight_naming_the_key(cvops, override, key):
    r = cvops("alerts", "recipe=quickstart", override, timeout=120)
    assert r.returncode == 2 and key in r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------- real Prometheus and Alertmanager
def _start(cmd: List[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)


def _firing(am: str) -> List[Dict[str, Any]]:
    return [a["labels"] for a in httpx.get(f"{am}/api/v2/alerts", timeout=5).json()]


def _images(root: Path, base: tuple, n: int, seed: int, brightness: float = 1.0) -> List[bytes]:
    """``n`` new images of the recipe's own generator (another seed), as the files it wrote."""
    import dataclasses

    from cvops.session import compose_job
    from cvops.synthetic import Shift, generate, spec_from_config

    spec = spec_from_config(compose_job(list(base), check_missing=False).data.synthetic, Shift(brightness=brightness))
    generate(root, dataclasses.replace(spec, num_images=n, videos=0, seed=seed), progress=False)
    coco = json.loads((root / "annotations.json").read_text())
    return [(root / im["file_name"]).read_bytes() for im in coco["images"]]


def _send(url: str, images: List[bytes], source: str) -> None:
    for jpg in images:
        r = httpx.post(f"{url}/v1/predict", content=jpg, timeout=30,
                       headers={"Content-Type": "image/jpeg", "X-Cvops-Source": source})
        assert r.status_code == 200, r.text


@pytest.mark.slow
def test_prometheus_and_alertmanager_alert_on_one_drifting_camera_then_on_no_traffic(cvops, project, tmp_path):
    import yaml

    prometheus, alertmanager = _tool("prometheus"), _tool("prometheus-alertmanager")
    base = ("recipe=quickstart", f"project={project}", "data.synthetic.num_images=80", "data.synthetic.videos=0",
            "model.image_size=[128,128]", "train.max_epochs=1", "tracker=none", "export.int8=false",
            "export.latency_repeats=2", "monitor.drift_window=30", "monitor.drift_every=10",
            "monitor.alerts.window=10s", "monitor.alerts.drift.duration=0s", "monitor.alerts.no_traffic.duration=8s")
    r = cvops(*base, "stages=[curate,train,export]", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rules = tmp_path / "rules.yml"
    r = cvops("alerts", *base, "--out", str(rules), timeout=120)
    assert r.returncode == 0, r.stderr

    port, am_port, prom_port = free_port(), free_port(), free_port()
    (tmp_path / "am.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "void", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "void"}]}))
    (tmp_path / "prom.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "cvops", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    procs = [_start([alertmanager, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}",
                     f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], tmp_path / "am.log"),
             _start([prometheus, f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prom.log"),
             cvops.popen("serve", *base, f"serve.port={port}", "serve.sample_rate=0")]
    am, url = f"http://127.0.0.1:{am_port}", f"http://127.0.0.1:{port}"
    try:
        _wait(f"{am}/-/ready", procs[0], tmp_path / "am.log")
        _wait(f"http://127.0.0.1:{prom_port}/-/ready", procs[1], tmp_path / "prom.log")
        wait_ready(procs[2], f"{url}/readyz")
        normal = _images(tmp_path / "normal", base, 60, seed=21)
        _send(url, normal[:30], "cam-a")
        _send(url, normal[30:], "cam-b")
        time.sleep(4)  # scraped and evaluated a few times
        assert not [a for a in _firing(am) if a["alertname"] == "CvopsDrift"], _firing(am)

        dark = _images(tmp_path / "dark", base, 30, seed=22, brightness=0.35)
        t0 = time.time()
        _send(url, normal[:30], "cam-a")
        _send(url, dark, "cam-b")
        while not [a for a in _firing(am) if a["alertname"] == "CvopsDrift"]:
            assert time.time() - t0 < 60, httpx.get(f"{url}/metrics").text[-3000:]
            time.sleep(0.5)
        drift_s = time.time() - t0
        fired = [a for a in _firing(am) if a["alertname"] == "CvopsDrift"]
        assert {a["source"] for a in fired} == {"cam-b"}, fired  # the dark camera only
        assert all(a["project"] == project and a["model"] and a["severity"] == "warning" for a in fired), fired

        t1 = time.time()  # no more traffic
        while not {"cam-a", "cam-b"} <= {a.get("source") for a in _firing(am) if a["alertname"] == "CvopsNoTraffic"}:
            assert time.time() - t1 < 60, _firing(am)
            time.sleep(0.5)
        print(f"alert latency: drift {drift_s:.1f} s after the dark images started, no traffic "
              f"{time.time() - t1:.1f} s after the last request (no_traffic.duration 8s)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
