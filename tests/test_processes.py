"""Real processes: a run killed mid-stage, two runs racing for one artifact."""

from __future__ import annotations

import signal
import time

from cvops.store import FolderStore


def _wait_for(proc, needle, timeout=60):
    t0 = time.time()
    lines = []
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen; output: {''.join(lines)}")


def test_kill_mid_stage_leaves_nothing_complete_and_rerun_rebuilds(cvops):
    proc = cvops.popen("recipe=quickstart", "stages=[curate,train]", test_stages=True,
                       env={"CVOPS_TEST_SLEEP_CURATE": "60"})
    line = _wait_for(proc, "TEST-STAGE curate sleeping in")
    workdir = line.rsplit(" in ", 1)[1].strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = FolderStore(cvops.store)
    fp = workdir.rstrip("/").rsplit("/", 1)[1]
    assert (store.dir("curate", fp) / "partial.txt").exists()  # half-written ...
    assert not store.is_complete("curate", fp)  # ... and not taken as complete
    killed = cvops.run_jsons()[-1]
    assert killed["status"] == "running"  # how far it got

    r = cvops("recipe=quickstart", "stages=[curate,train]", test_stages=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert store.is_complete("curate", fp)
    assert not (store.dir("curate", fp) / "partial.txt").exists()  # the rerun started clean
    rerun = cvops.run_jsons()[-1]
    assert rerun["stages"]["curate"]["status"] == "ran" and rerun["status"] == "ok"
    assert [c.split()[0] for c in cvops.calls()] == ["curate", "curate", "train"]


def test_two_concurrent_runs_build_a_shared_artifact_once(cvops):
    env = {"CVOPS_TEST_SLEEP_CURATE": "3"}
    a = cvops.popen("recipe=quickstart", "stages=[curate,train]", test_stages=True, env=env)
    b = cvops.popen("recipe=quickstart", "stages=[curate,train]", "train.lr=0.01", test_stages=True, env=env)
    out_a, _ = a.communicate(timeout=120)
    out_b, _ = b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    calls = [c.split()[0] for c in cvops.calls()]
    assert calls.count("curate") == 1, calls  # built once ...
    assert calls.count("train") == 2  # ... different train configs both ran
    runs = cvops.run_jsons()
    curate = sorted(r["stages"]["curate"]["status"] for r in runs)
    assert curate == ["cached", "ran"]
    shared = [r for r in runs if r["stages"]["curate"]["status"] == "cached"][0]
    assert "concurrent run" in shared["stages"]["curate"]["reason"]
    assert len({r["stages"]["curate"]["fingerprint"] for r in runs}) == 1
    assert "waiting" in out_a + out_b
