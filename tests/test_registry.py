"""The model registry (aliases, history, promote/rollback) and a server that follows an alias.

The registry tests use export artifacts written into a real store; the last
test promotes and rolls back through the ``cvops`` command line while a real
``cvops serve`` (uvicorn, ONNX Runtime) answers 8 concurrent clients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.images import encode  # noqa: E402
from helpers.net import free_port, wait_for_http  # noqa: E402

from cvops.store import FolderStore  # noqa: E402
from cvops.store.registry import Registry, RegistryError, find_export  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def put_export(store: Path, fp: str, project: str = "regtest", gate: str = "pass", model: Path | None = None,
               curate: str | None = None) -> None:
    """A committed export artifact (a manifest, and the ONNX model when given)."""
    d = store / "export" / fp
    d.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    if model is not None:
        for f in model.parent.iterdir():
            if f.is_file():
                shutil.copy2(f, d / f.name)
        artifacts["onnx"] = model.name
    (d / "manifest.json").write_text(json.dumps({
        "stage": "export", "fingerprint": fp, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": {"project": project}, "inputs": {"curate": curate, "train": "t" + fp[:15]},
        "artifacts": artifacts, "metrics": {"gate": gate, "onnx_map": 0.5}}))


def test_promote_rollback_is_a_stack_with_history(tmp_path: Path, capsys) -> None:
    store = FolderStore(tmp_path)
    for fp in ("aaaa000000000001", "bbbb000000000002", "cccc000000000003"):
        put_export(tmp_path, fp)
    reg = Registry(store, "regtest")
    a, b, c = (store.get("export", fp) for fp in ("aaaa000000000001", "bbbb000000000002", "cccc000000000003"))
    reg.promote("production", a, "first")
    reg.promote("production", b)
    reg.promote("staging", c)
    reg.promote("production", c, "c wins")
    assert reg.resolve("production") == c.fingerprint and reg.resolve("staging") == c.fingerprint
    ev = reg.rollback("production", "c regressed")
    assert (ev.export, ev.previous) == (b.fingerprint, c.fingerprint) and reg.resolve("production") == b.fingerprint
    reg.rollback("production")  # twice: two promotions back, not back and forth
    assert reg.resolve("production") == a.fingerprint
    with pytest.raises(RegistryError, match="no earlier export"):
        reg.rollback("production")
    with pytest.raises(RegistryError, match="not set"):
        reg.rollback("canary")
    history = reg.history("production")
    assert [e.action for e in history] == ["promote", "promote", "promote", "rollback", "rollback"]
    assert history[0].message == "first" and history[0].user and history[0].time.endswith("Z")
    assert history[0].info["gate"] == "pass" and history[0].info["train"] == "taaaa00000000000"
    # a reader of another process sees the same state, and `cvops models` shows it
    from cvops.cli import main

    assert main(["models", "recipe=quickstart", "project=regtest", f"paths.store={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.split()[:2] == ["production", a.fingerprint] for ln in lines), lines
    assert any('"c regressed"' in ln for ln in lines), lines


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    put_export(tmp_path, "dddd000000000001", gate="fail")
    put_export(tmp_path, "dddd000000000002")
    put_export(tmp_path, "eeee000000000001", project="other")
    reg = Registry(store, "regtest")
    failed = store.get("export", "dddd000000000001")
    with pytest.raises(RegistryError, match="did not pass its gate.*--force"):
        reg.promote("production", failed)
    assert reg.resolve("production") is None  # nothing recorded
    reg.promote("production", failed, force=True)
    with pytest.raises(RegistryError, match="already points at"):
        reg.promote("production", failed, force=True)
    with pytest.raises(RegistryError, match="matches 2 exports"):
        find_export(store, "dddd", "regtest")
    with pytest.raises(RegistryError, match="belongs to project other"):
        find_export(store, "eeee", "regtest")
    with pytest.raises(RegistryError, match="belongs to project other"):
        reg.promote("x", store.get("export", "eeee000000000001"))
    with pytest.raises(RegistryError, match="no export"):
        find_export(store, "ffff", "regtest")
    for bad in ("../prod", "a/b", "", ".hidden", "x" * 65, "prod uction", "prod\n"):
        with pytest.raises(RegistryError, match="not a valid name"):
            reg.promote(bad, failed, force=True)
    with pytest.raises(RegistryError, match="not a valid name"):
        Registry(store, "../../etc")
    for bad in ("", "dd", "zzzz", "dddd; rm"):
        with pytest.raises(RegistryError, match="at least 4 hex digits"):
            find_export(store, bad, "regtest")
    assert {p.name for p in tmp_path.iterdir()} == {"export", "registry"}  # nothing written anywhere else
    assert [p.name for p in (tmp_path / "registry").iterdir()] == ["regtest"]


def test_concurrent_promotions_lose_nothing_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    fps = [f"{i:04x}000000000000" for i in range(1, 13)]
    for fp in fps:
        put_export(tmp_path, fp)
    reg = Registry(store, "regtest")
    errors: List[BaseException] = []

    def promote(fp: str) -> None:
        try:
            Registry(FolderStore(tmp_path), "regtest").promote(f"a{int(fp[:4], 16) % 3}", store.get("export", fp))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(fp,)) for fp in fps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(reg.history()) == 12
    for alias in ("a0", "a1", "a2"):  # each alias's current export is its last promotion
        assert reg.resolve(alias) == reg.history(alias)[-1].export
    with open(reg.history_file, "a") as f:
        f.write('{"action": "promote", "alias": "a0", "exp')  # a crash mid-append
    assert len(reg.history()) == 12
    reg.rollback("a0")  # the next event lands on a line of its own, not glued to the torn one
    assert len(reg.history()) == 13 and reg.history()[-1].action == "rollback"
    with open(reg.history_file, "a") as f:
        f.write('[]\n1\n{"alias": 5}\n')  # JSON that is not an event
    assert len(reg.history()) == 13
    # aliases.json follows the history: damaged or stale, the next read or event repairs it
    expected = {a: reg.resolve(a) for a in ("a0", "a1", "a2")}
    reg.aliases_file.write_text("{not json")
    assert {a: reg.resolve(a) for a in expected} == expected
    reg.aliases_file.write_text(json.dumps({"a1": {"export": "../../etc"}}))
    with pytest.raises(RegistryError, match="not an export fingerprint"):
        reg.resolve("a1")
    other = next(fp for fp in fps if fp != expected["a1"])  # the threads' order decides a1's head
    reg.promote("a1", store.get("export", other))
    assert reg.resolve("a1") == other and reg.resolve("a2") == expected["a2"]


def _cvops(*args: str, env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvops", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


@pytest.mark.slow
def test_server_on_an_alias_swaps_under_load_without_a_failed_request(model_path: Path, tmp_path: Path) -> None:
    """Promote A, serve the alias, 8 clients; promote B mid-load, then roll back: zero failed requests, every
    answer names the export that answered, and after each switch only the new export answers."""
    import httpx

    store = tmp_path / "store"
    fp_a, fp_b = "a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2"
    put_export(store, fp_a, model=model_path)
    put_export(store, fp_b, model=model_path)
    env = {**os.environ, "CVOPS_STORE": str(store), "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    common = ("recipe=quickstart", "project=regtest", f"paths.store={store}")
    r = _cvops("promote", *common, "--alias", "production", "--export", fp_a[:6], "-m", "first", env=env, cwd=tmp_path)
    assert r.returncode == 0 and f"production -> export {fp_a}" in r.stdout, r.stdout + r.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "server.out"
    with open(out, "w") as f:
        server = subprocess.Popen([sys.executable, "-m", "cvops", "serve", *common, "serve.alias=production",
                                   f"serve.port={port}", "serve.alias_poll_s=30", "serve.sample_rate=0"],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    answers: List[tuple] = []  # (sent, received, status, model)
    stop = threading.Event()
    import numpy as np

    jpg = encode(np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8))

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    resp = c.post(f"{url}/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg"})
                    answers.append((sent, time.monotonic(), resp.status_code, resp.json().get("model")))
                except httpx.HTTPError as e:  # a dropped connection is a failed request too
                    answers.append((sent, time.monotonic(), type(e).__name__, None))

    try:
        wait_for_http(server, f"{url}/readyz", out)
        assert httpx.get(f"{url}/v1/model").json()["fingerprint"] == fp_a
        clients = [threading.Thread(target=client) for _ in range(8)]
        for t in clients:
            t.start()
        switched = []
        for target, cmd in ((fp_b, ("promote", *common, "--alias", "production", "--export", fp_b[:6])),
                            (fp_a, ("rollback", *common, "--alias", "production", "-m", "back"))):
            time.sleep(2)
            r = _cvops(*cmd, env=env, cwd=tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
            resp = httpx.post(f"{url}/v1/admin/reload", timeout=60)  # now, instead of the next poll
            assert resp.status_code == 200 and resp.json()["export"] == target, resp.text
            switched.append((time.monotonic(), target))
        time.sleep(2)
    finally:
        stop.set()
        for t in clients if "clients" in locals() else ():
            t.join(timeout=60)
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    assert len(answers) > 50, len(answers)
    assert [a for a in answers if a[2] != 200] == [], out.read_text()[-3000:]
    assert {a[3] for a in answers} == {fp_a, fp_b}
    for (t_switch, target), end in zip(switched, [s[0] for s in switched[1:]] + [float("inf")]):
        after = [a for a in answers if t_switch < a[0] and a[1] < end]
        assert after and all(a[3] == target for a in after), (target, after[:5])
    log = out.read_text()
    assert "following alias production" in log


def test_each_worker_follows_the_alias(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers N``: every uvicorn worker rebuilds the app from the pickled config and follows the alias
    itself; one that starts before any promotion is not ready (503) until there is one."""
    import uvicorn
    from fastapi.testclient import TestClient

    from cvops.schema import ServeConfig
    from cvops.serve.models import ExportSource
    from cvops.serve.server import CONFIG_ENV, app_from_env, serve

    store = tmp_path / "store"
    put_export(store, "c3c3c3c3c3c3c3c3", model=model_path)
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: None)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    cfg = ServeConfig(port=free_port(), alias="production", alias_poll_s=0.1, max_batch=2)
    serve(None, cfg, source=ExportSource(str(store), "regtest", alias="production"), log_dir=tmp_path / "log",
          workers=2)
    try:
        with TestClient(app_from_env()) as worker:
            assert worker.get("/readyz").status_code == 503 and worker.get("/healthz").status_code == 200
            r = worker.post("/v1/predict", content=encode(np.zeros((32, 32, 3), np.uint8)),
                            headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 503 and "Retry-After" in r.headers and "no model is loaded yet" in r.json()["error"]
            reg = Registry(FolderStore(store), "regtest")
            reg.promote("production", reg.store.get("export", "c3c3c3c3c3c3c3c3"))
            deadline = time.monotonic() + 30
            while worker.get("/readyz").status_code != 200:  # the poll picks it up
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert worker.get("/v1/model").json()["fingerprint"] == "c3c3c3c3c3c3c3c3"
            r = worker.post("/v1/predict", content=encode(np.zeros((32, 32, 3), np.uint8)),
                            headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["model"] == "c3c3c3c3c3c3c3c3"
            # an alias pointing at an export that will not load: the old model keeps serving, the error is counted
            put_export(store, "d4d4d4d4d4d4d4d4")  # no model file
            reg.promote("production", reg.store.get("export", "d4d4d4d4d4d4d4d4"))
            resp = worker.post("/v1/admin/reload")
            assert resp.status_code == 500 and "still served" in resp.json()["error"]
            assert worker.get("/v1/model").json()["fingerprint"] == "c3c3c3c3c3c3c3c3"
            assert 'cvops_errors_total{reason="model_load"} 1.0' in worker.get("/metrics").text
    finally:
        Path(os.environ[CONFIG_ENV]).unlink(missing_ok=True)


def test_follower_survives_a_damaged_alias_and_tries_a_broken_export_once(model_path: Path, tmp_path: Path) -> None:
    from cvops.serve.models import AliasFollower, ExportSource

    store = tmp_path / "store"
    put_export(store, "e5e5e5e5e5e5e5e5", model=model_path)
    put_export(store, "f6f6f6f6f6f6f6f6")  # no model file: cannot load
    loaded, errors = [], []
    f = AliasFollower(ExportSource(str(store), "regtest", alias="production"),
                      lambda det, info, drift: loaded.append(info["fingerprint"]), poll_s=10)
    f.on_error = errors.append
    reg = Registry(FolderStore(store), "regtest")
    reg.dir.mkdir(parents=True)
    reg.aliases_file.write_text(json.dumps({"production": {"export": "../x"}}))  # hostile, no history
    with pytest.raises(RuntimeError, match="cannot read the alias"):
        f.check()
    reg.aliases_file.unlink()
    assert f.check()["changed"] is False and loaded == []  # not set: nothing to serve yet
    reg.promote("production", reg.store.get("export", "e5e5e5e5e5e5e5e5"))
    assert f.check()["export"] == "e5e5e5e5e5e5e5e5" and loaded == ["e5e5e5e5e5e5e5e5"]
    reg.promote("production", reg.store.get("export", "f6f6f6f6f6f6f6f6"))
    for _ in range(3):  # the poll: one failed load, then no retries
        with pytest.raises(RuntimeError, match="f6f6f6f6f6f6f6f6 cannot be served"):
            f.check()
    assert len(errors) == 2 and f.serving == "e5e5e5e5e5e5e5e5"  # the alias error, then one load error
    with pytest.raises(RuntimeError):
        f.check(force=True)  # an operator's reload tries again


def test_admin_reload_is_behind_the_token_and_readiness_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from cvops.schema import ServeConfig
    from cvops.serve.app import create_app

    calls: List[int] = []
    app = create_app(None, ServeConfig(), info={}, log=None, token="s3cret",
                     reload=lambda: calls.append(1) or {"export": None, "changed": False})
    with TestClient(app) as client:
        assert client.post("/v1/admin/reload").status_code == 401
        assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert calls == []  # a refused caller triggers no load
        r = client.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and calls == [1]
        assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200  # no token
    fixed = create_app(None, ServeConfig(), info={}, log=None)  # one fixed model: nothing to reload
    with TestClient(fixed) as client:
        assert client.post("/v1/admin/reload").status_code == 404


def test_rollback_refuses_an_export_gone_from_the_store_and_promote_a_copied_folder(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    put_export(tmp_path, "abab000000000001")
    put_export(tmp_path, "abab000000000002")
    reg = Registry(store, "regtest")
    reg.promote("production", store.get("export", "abab000000000001"))
    reg.promote("production", store.get("export", "abab000000000002"))
    shutil.rmtree(tmp_path / "export" / "abab000000000001")  # gc'd, or removed by hand
    with pytest.raises(RegistryError, match="abab000000000001, which is no longer in the store"):
        reg.rollback("production")
    assert reg.resolve("production") == "abab000000000002"  # nothing recorded
    shutil.copytree(tmp_path / "export" / "abab000000000002", tmp_path / "export" / "cdcd000000000009")
    with pytest.raises(RegistryError, match="holds the manifest of export abab000000000002.*copied or renamed"):
        reg.promote("staging", store.get("export", "cdcd000000000009"))


def test_a_damaged_history_is_reported_by_line_and_the_valid_records_are_used(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    for fp in ("baba000000000001", "baba000000000002"):
        put_export(tmp_path, fp)
    reg = Registry(store, "regtest")
    reg.promote("production", store.get("export", "baba000000000001"))
    with open(reg.history_file, "ab") as f:
        f.write(b"\xff\xfe garbage \x80\n")  # invalid bytes
        f.write(b'{"no": "event"}\n')
    reg.promote("production", store.get("export", "baba000000000002"))
    assert [e.export for e in reg.history()] == ["baba000000000001", "baba000000000002"]
    assert [d.split(": ", 1)[0] for d in reg.damage] == [f"{reg.history_file}:2", f"{reg.history_file}:3"]
    assert "not UTF-8" in reg.damage[0] and "not a registry event" in reg.damage[1]
    env = {**os.environ, "CVOPS_STORE": str(tmp_path)}
    r = _cvops("models", "recipe=quickstart", "project=regtest", env=env, cwd=tmp_path)
    assert r.returncode == 0 and "baba000000000002" in r.stdout, r.stderr
    assert f"warning: {reg.history_file}:2: not UTF-8" in r.stderr and f"{reg.history_file}:3" in r.stderr
    r = _cvops("rollback", "recipe=quickstart", "project=regtest", "--alias", "production", env=env, cwd=tmp_path)
    assert r.returncode == 0 and "-> export baba000000000001" in r.stdout and "not UTF-8" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_server_not_serving_what_its_alias_names_says_so(model_path: Path, tmp_path: Path) -> None:
    """The alias moved to an export the server cannot load (gone, broken): the old model keeps answering,
    but /readyz is 503 "stale" and /v1/model says what the alias names and why."""
    from fastapi.testclient import TestClient

    from cvops.schema import ServeConfig
    from cvops.serve.app import create_app
    from cvops.serve.models import AliasFollower, ExportSource

    store = tmp_path / "store"
    put_export(store, "a1a1a1a1a1a1a1a1", model=model_path)
    put_export(store, "b2b2b2b2b2b2b2b2", model=model_path)
    reg = Registry(FolderStore(store), "regtest")
    reg.promote("production", reg.store.get("export", "a1a1a1a1a1a1a1a1"))
    app = create_app(None, ServeConfig(), info={}, log=None)
    f = AliasFollower(ExportSource(str(store), "regtest", alias="production"), app.state.load, poll_s=10)
    app.state.follower = f
    with TestClient(app) as client:
        f.check()
        assert client.get("/readyz").json() == {"status": "ready", "model": "a1a1a1a1a1a1a1a1"}
        reg.promote("production", reg.store.get("export", "b2b2b2b2b2b2b2b2"))
        shutil.rmtree(store / "export" / "b2b2b2b2b2b2b2b2")  # removed before the server read the alias
        with pytest.raises(RuntimeError):
            f.check()
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "stale", r.json()
        assert r.json()["model"] == "a1a1a1a1a1a1a1a1" and r.json()["alias_export"] == "b2b2b2b2b2b2b2b2"
        stale = client.get("/v1/model").json()["stale"]
        assert stale["serving"] == "a1a1a1a1a1a1a1a1" and stale["reason"]
        reg.rollback("production")  # back to what it serves: ready again
        f.check()
        assert client.get("/readyz").status_code == 200 and "stale" not in client.get("/v1/model").json()


@pytest.mark.slow
def test_shadow_traffic_runs_the_staging_export_beside_the_live_one_off_the_response_path(model_path: Path,
                                                                                           tmp_path: Path) -> None:
    """serve.shadow_alias=staging: every 1/shadow_rate-th answered request is also run by the staging export in
    a background thread; the agreement lands in shadow.jsonl and /metrics, and the answers are the live model's."""
    import dataclasses

    from fastapi.testclient import TestClient

    from cvops.schema import MonitorConfig, ServeConfig
    from cvops.serve.models import ExportSource
    from cvops.serve.server import build_app
    from cvops.serve.shadow import agreement

    store = tmp_path / "store"
    put_export(store, "c3c3c3c3c3c3c3c3", model=model_path)
    put_export(store, "d4d4d4d4d4d4d4d4", model=model_path)  # the same network: they must agree
    reg = Registry(FolderStore(store), "regtest")
    reg.promote("production", reg.store.get("export", "c3c3c3c3c3c3c3c3"))
    reg.promote("staging", reg.store.get("export", "d4d4d4d4d4d4d4d4"))
    cfg = dataclasses.replace(ServeConfig(), alias="production", shadow_alias="staging", shadow_rate=0.5)
    source = ExportSource(str(store), "regtest", alias="production", monitor=MonitorConfig(low_confidence=0.0))
    logs = tmp_path / "requests"
    app = build_app(None, cfg, log_dir=logs, source=source)
    rng = np.random.default_rng(0)
    with TestClient(app) as client:
        for _ in range(10):
            img = encode(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), ".jpg")
            r = client.post("/v1/predict", files={"image": ("x.jpg", img, "image/jpeg")})
            assert r.status_code == 200 and r.json()["model"] == "c3c3c3c3c3c3c3c3"
        app.state.shadow.close()  # let the shadow thread finish its queue
        metrics = client.get("/metrics").text
    ev = agreement((logs / "shadow.jsonl").read_text().splitlines(), "c3c3c3c3c3c3c3c3", "d4d4d4d4d4d4d4d4")
    # every second request; the same network agrees (up to the max_det cut among an untrained model's
    # near-equal scores: every box down to score 0 is compared here)
    assert ev["requests"] == 5 and ev["mean_f1"] > 0.85, ev
    assert 'cvops_shadow_requests_total{shadow="d4d4d4d4d4d4d4d4"} 5.0' in metrics
    bad = dataclasses.replace(cfg, shadow_alias="production")
    from cvops.errors import ConfigError

    with pytest.raises(ConfigError, match="another alias than serve.alias"):
        build_app(None, bad, log_dir=logs, source=source)


def test_shadow_agreement_counts_boxes_by_class_at_iou_half() -> None:
    from cvops.detector.runtime import Detections
    from cvops.serve.shadow import compare, f1

    live = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
                      np.array([0.9, 0.8, 0.2], np.float32), np.array([0, 1, 1]))
    # the shadow: the circle moved a little (IoU 0.68), the square's box far off, a new triangle;
    # its classes in another order (matched by name)
    shadow = Detections(np.array([[1, 1, 11, 11], [70, 70, 80, 80], [20, 20, 30, 30]], np.float32),
                        np.array([0.7, 0.6, 0.5], np.float32), np.array([1, 0, 2]))
    counts = compare(live, ["circle", "square"], shadow, ["triangle", "circle", "square"], confidence=0.3)
    assert counts == {"circle": {"tp": 1, "fp": 0, "fn": 0}, "square": {"tp": 1, "fp": 0, "fn": 0},
                      "triangle": {"tp": 0, "fp": 1, "fn": 0}}
    assert f1(counts) == pytest.approx(2 * 2 / (2 * 2 + 1))
    assert f1({}) == 1.0  # neither saw anything
