"""The artifact store on S3 (a real S3-compatible HTTP server, moto's, started here): commit by conditional
manifest write, expiring build leases, per-machine caches verified against the manifest, data from S3."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers.s3 import use
from test_processes import _wait_for

from cvops.store import StoreError, open_store


@pytest.fixture
def store_url(s3, monkeypatch):
    use(s3, monkeypatch)
    return f"s3://{s3.bucket()}/team/store"


def _store(url, cache, lease_s=30.0):
    from cvops.store.s3 import ObjectStore

    return ObjectStore(url, {}, cache, lease_s)


def test_open_store_picks_the_backend(tmp_path, store_url):
    from cvops.config import compose_config
    from cvops.store import FolderStore
    from cvops.store.s3 import ObjectStore

    assert isinstance(open_store(tmp_path / "s"), FolderStore)
    cfg = compose_config(["recipe=quickstart", f"paths.store={store_url}", f"paths.cache={tmp_path / 'c'}",
                          "paths.lease_s=7"])
    st = open_store(cfg.paths)
    assert isinstance(st, ObjectStore) and st.lease_s == 7 and st.root.is_relative_to(tmp_path / "c")


def _build(store, fp="f00d", payload=b"weights", stage="train"):
    with store.build(stage, fp) as b:
        assert b is not None
        (b.dir / "model.pth").write_bytes(payload)
        (b.dir / "report").mkdir()
        (b.dir / "report" / "loss.png").write_bytes(b"png")
        return b.commit({"stage": stage, "fingerprint": fp, "artifacts": {"checkpoint": "model.pth"}})


def test_commit_then_another_machine_reads_it_through_its_own_verified_cache(store_url, tmp_path):
    a = _store(store_url, tmp_path / "cache-a")
    art = _build(a)
    assert art.path("checkpoint").read_bytes() == b"weights"
    b = _store(store_url, tmp_path / "cache-b")  # "machine B": nothing cached
    assert b.is_complete("train", "f00d") and not b.is_complete("train", "beef")
    got = b.get("train", "f00d")
    assert got.dir.is_relative_to(tmp_path / "cache-b")
    assert got.path("checkpoint").read_bytes() == b"weights" and (got.dir / "report" / "loss.png").exists()
    assert got.manifest["files"]["model.pth"]["size"] == 7
    # a damaged cached file is fetched again, an intact one is not rehashed once verified
    got.path("checkpoint").write_bytes(b"weightz")
    assert b.get("train", "f00d").path("checkpoint").read_bytes() == b"weights"
    # the bucket's copy damaged: refused, naming the object
    key = f"{b.key}/train/f00d/{got.manifest['build']}/model.pth"
    b.fs.pipe_file(key, b"tampered")
    c = _store(store_url, tmp_path / "cache-c")
    with pytest.raises(StoreError, match="model.pth does not match its manifest"):
        c.get("train", "f00d")
    assert a.get("nothing", "here") is None
    assert a.id == b.id  # one identity per bucket prefix, whichever machine asks first


def test_two_builders_of_one_fingerprint_end_with_one_whole_artifact(store_url, tmp_path):
    """The lease made unusable (as when a holder was presumed dead but was not): both build, both upload,
    the conditional manifest write lets exactly one win, and each gets the winner's bytes."""
    a = _store(store_url, tmp_path / "cache-a")
    b = _store(store_url, tmp_path / "cache-b")
    ba = a.build("train", "cafe").__enter__()
    (ba.dir / "model.pth").write_bytes(b"A" * 1000)
    # B bypasses the lease and commits first
    from cvops.store.s3 import ObjectBuilder

    b_dir = b.dir("train", "cafe")
    b_dir.mkdir(parents=True)
    (b_dir / "model.pth").write_bytes(b"B" * 1000)
    won = ObjectBuilder("train", "cafe", b_dir, b, "bbbbbbbbbbbb", ba.lease).commit(
        {"stage": "train", "fingerprint": "cafe", "artifacts": {"checkpoint": "model.pth"}})
    lost = ba.commit({"stage": "train", "fingerprint": "cafe", "artifacts": {"checkpoint": "model.pth"}})
    ba.lease.release()
    assert won.path("checkpoint").read_bytes() == b"B" * 1000
    assert lost.path("checkpoint").read_bytes() == b"B" * 1000  # A's copy replaced by the winner's
    fresh = _store(store_url, tmp_path / "cache-c").get("train", "cafe")
    assert fresh.path("checkpoint").read_bytes() == b"B" * 1000 and fresh.manifest["build"] == "bbbbbbbbbbbb"


def test_a_dead_holders_lease_expires_a_live_one_does_not(store_url, tmp_path):
    holder = _store(store_url, tmp_path / "cache-a", lease_s=3)
    waiter = _store(store_url, tmp_path / "cache-b", lease_s=3)
    ctx = holder.build("curate", "0123")
    b = ctx.__enter__()
    got, waited = {}, []

    def wait():
        t0 = time.monotonic()
        with waiter.build("curate", "0123", timeout=60, on_wait=lambda d: waited.append(d)) as w:
            got["builder"], got["after"] = w, time.monotonic() - t0

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(6)  # two lease periods: renewed, so still held
    assert "builder" not in got and waited
    b.lease._stop.set()  # the holder "dies": no more renewals, no release
    b.lease._thread.join()
    t.join(timeout=30)
    assert got["builder"] is not None and got["after"] > 6  # taken over once the lease went stale
    assert not holder.is_complete("curate", "0123")  # nothing was committed by the dead holder


def test_killed_builder_leaves_nothing_committed_and_a_concurrent_run_reuses(cvops, store_url, tmp_path, s3):
    env = {**s3.env, "CVOPS_STORE": store_url, "CVOPS_TEST_SLEEP_CURATE": "60"}
    common = ("recipe=quickstart", "stages=[curate,train]", "paths.lease_s=3")
    proc = cvops.popen(*common, test_stages=True, env={**env, "CVOPS_CACHE_DIR": str(tmp_path / "cache-a")})
    line = _wait_for(proc, "TEST-STAGE curate sleeping in")
    fp = line.rsplit(" in ", 1)[1].strip().rstrip("/").rsplit("/", 1)[1]
    store = _store(store_url, tmp_path / "probe")
    assert store.fs.exists(f"{store.key}/curate/{fp}.lease")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not store.is_complete("curate", fp)
    assert store.fs.exists(f"{store.key}/curate/{fp}.lease")  # left behind by the dead run ...

    # two runs with their own caches (two machines) race for the same curate: one builds (after taking over the
    # dead lease), the other waits and reuses
    env["CVOPS_TEST_SLEEP_CURATE"] = "4"
    a = cvops.popen(*common, test_stages=True, env={**env, "CVOPS_CACHE_DIR": str(tmp_path / "cache-b")})
    b = cvops.popen(*common, "train.lr=0.01", test_stages=True, env={**env, "CVOPS_CACHE_DIR": str(tmp_path / "cache-c")})
    out_a, _ = a.communicate(timeout=180)
    out_b, _ = b.communicate(timeout=180)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert store.is_complete("curate", fp)
    assert not store.fs.exists(f"{store.key}/curate/{fp}.lease")  # ... and released by the one that built
    calls = [c.split()[0] for c in cvops.calls()]
    assert calls.count("curate") == 2 and calls.count("train") == 2, calls  # killed + one rebuild; 2 configs
    runs = cvops.run_jsons()[-2:]
    assert sorted(r["stages"]["curate"]["status"] for r in runs) == ["cached", "ran"]
    for cache in ("cache-b", "cache-c"):
        assert json.loads((tmp_path / cache / "store" / store.key / "curate" / fp / "manifest.json").read_text())[
            "fingerprint"] == fp
    assert "took over the build lease" in cvops.logs() + out_a + out_b


def test_curate_reads_data_from_s3_and_its_state_enters_the_fingerprint(store_url, tmp_path, monkeypatch):
    import fiftyone as fo

    from cvops.config import compose_config
    from cvops.fingerprint import fingerprints
    from cvops.runner import Runner
    from helpers.make_data import yolo_dataset

    local = tmp_path / "yolo"
    yolo_dataset(local, foreign_paths=False)
    (local / "data.yaml").write_text("train: train/images\nval: valid/images\nnc: 2\nnames: ['a', 'b']\n")
    fs = _store(store_url, tmp_path / "x").fs
    data_url = store_url.rsplit("/", 1)[0] + "/datasets/cells"
    fs.put(str(local) + "/", data_url[5:] + "/", recursive=True)
    project = f"s3data{os.getpid()}"
    ov = [f"project={project}", "stages=[curate]", "data=yolo", f"data.path={data_url}/data.yaml",
          f"paths.store={store_url}", f"paths.cache={tmp_path / 'cache'}"]
    try:
        cfg = compose_config(ov)
        before = fingerprints(cfg)["curate"]["fingerprint"]
        Runner(cfg, tmp_path / "run").run()
        m = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["curate"]
        assert m["status"] == "ran", m
        local_run = compose_config([*ov[:-2], f"data.path={local / 'data.yaml'}", f"paths.store={tmp_path / 'ls'}"])
        Runner(local_run, tmp_path / "run-local").run()
        ml = json.loads((tmp_path / "run-local" / "run.json").read_text())["stages"]["curate"]
        for k in ("images_in", "images_kept", "boxes_in", "boxes_kept", "images_quarantined"):
            assert m["metrics"][k] == ml["metrics"][k], k  # counted like the same files on disk
        assert Path(m["artifacts"]["dir"], "source").is_dir()  # fetched into the artifact
        fs.pipe_file(data_url[5:] + "/train/labels/im21.txt", b"1 0.5 0.5 0.2 0.2\n")
        assert fingerprints(compose_config(ov))["curate"]["fingerprint"] != before
    finally:
        for name in fo.list_datasets():
            if name.startswith(project):
                fo.delete_dataset(name)


def test_curate_on_machine_a_train_evaluate_export_on_machine_b(cvops, s3, tmp_path, monkeypatch):
    """Two "machines" that share only the bucket and the FiftyOne database: A curates local data; its cache is
    then moved away (B has nothing of A's on disk but the same cache path), and B trains, evaluates and exports
    from the store. The App's dataset, resolved on B's side, is A's dataset with B's predictions, and every
    image it lists is a file on B (the artifact carried them: media/)."""
    import shutil
    import subprocess
    import sys

    import fiftyone as fo

    from cvops.synthetic import SyntheticSpec, generate

    data = tmp_path / "data"
    generate(data, SyntheticSpec(num_images=30, image_size=[128, 96], min_size=20, max_size=48, videos=0, seed=3),
             progress=False)
    store = f"s3://{s3.bucket()}/store"
    cache = tmp_path / "cache"
    project = f"ab{os.getpid()}"
    recipe = ["recipe=quickstart", f"project={project}", "data=coco", f"data.path={data / 'annotations.json'}",
              "model.image_size=[128,128]", "train.max_epochs=1", "tracker=none", "export.calib_images=8",
              "export.latency_repeats=3", "export.int8=false"]
    env = {**cvops.env, **s3.env, "CVOPS_STORE": store, "CVOPS_CACHE_DIR": str(cache)}

    def machine(name, *args):
        work = tmp_path / name
        work.mkdir(exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "cvops", *recipe, *args], cwd=work, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        newest = max(work.glob("outputs/**/run.json"), key=lambda p: p.stat().st_mtime)
        return json.loads(newest.read_text())["stages"]

    try:
        a = machine("a", "stages=[curate]")
        assert a["curate"]["status"] == "ran"
        shutil.move(str(cache), str(tmp_path / "cache-of-a"))  # B has none of A's files
        b = machine("b", "stages=[train,evaluate,export]")
        assert b["curate"]["status"] == "cached" and b["curate"]["fingerprint"] == a["curate"]["fingerprint"]
        assert {b[s]["status"] for s in ("train", "evaluate", "export")} == {"ran"}, b
        coco = json.loads(Path(b["curate"]["artifacts"]["coco_train"]).read_text())
        assert all(Path(im["file_name"]).is_file() and "/media/" in im["file_name"] and
                   Path(im["file_name"]).is_relative_to(cache) for im in coco["images"])

        use(s3, monkeypatch)  # this process is "on machine B" now
        monkeypatch.setenv("CVOPS_STORE", store)
        monkeypatch.setenv("CVOPS_CACHE_DIR", str(cache))
        from cvops.store import open_store
        from cvops.config import compose_config
        from cvops.fiftyone_app import confident_view, curated_dataset
        from cvops.fingerprint import fingerprints

        cfg = compose_config(recipe)
        fps, on_b = fingerprints(cfg), open_store(cfg.paths)
        name, why = curated_dataset(on_b.get("curate", fps["curate"]["fingerprint"]), str(cfg.project),
                                    fps["curate"]["fingerprint"])
        assert name == a["curate"]["metrics"]["dataset_name"] and "curated for this config" in why
        ds = fo.load_dataset(name)
        assert ds.count("ground_truth.detections") == a["curate"]["metrics"]["boxes_kept"]
        field = b["evaluate"]["metrics"]["predictions_field"]
        splits = [k[len("predictions_"):] for k in b["evaluate"]["artifacts"] if k.startswith("predictions_")]
        predicted = sum(len(json.loads(Path(b["curate"]["artifacts"][f"coco_{sp}"]).read_text())["images"])
                        for sp in splits)
        assert predicted > 0 and ds.exists(field).count() == predicted  # B's predictions, in A's dataset
        assert all(Path(p).is_file() for p in ds.values("filepath"))
        assert confident_view(on_b.get("evaluate", fps["evaluate"]["fingerprint"]), name) in ds.list_saved_views()
    finally:
        for name in fo.list_datasets():
            if name.startswith(project):
                fo.delete_dataset(name)


def test_the_registry_lives_in_the_bucket_promote_on_a_serve_follows_on_b(store_url, tmp_path, model_path):
    """Machine A promotes an export of the s3:// store; a server on machine B (its own cache) follows the alias
    and loads the export from the bucket; concurrent promotions from several machines lose no event."""
    import shutil
    import threading

    from cvops.store import store_spec
    from cvops.store.registry import Registry
    from cvops.serve.models import AliasFollower, ExportSource

    a = _store(store_url, tmp_path / "cache-a")
    fps = ["e1e1e1e1e1e1e1e1", "e2e2e2e2e2e2e2e2"] + [f"{i:04x}000000000000" for i in range(1, 7)]
    for fp in fps:
        with a.build("export", fp) as b:
            for f in model_path.parent.iterdir():
                if f.is_file():
                    shutil.copy2(f, b.dir / f.name)
            b.commit({"stage": "export", "fingerprint": fp, "config": {"project": "regtest"},
                      "inputs": {"train": "t" + fp[:15]}, "artifacts": {"onnx": model_path.name},
                      "metrics": {"gate": "pass"}})
    reg_a = Registry(a, "regtest")
    b_store = _store(store_url, tmp_path / "cache-b")
    loaded = []
    follower = AliasFollower(ExportSource(str(b_store.root), "regtest", alias="production", store=store_spec(b_store)),
                             lambda det, info, drift: loaded.append(info["fingerprint"]), poll_s=10)
    assert follower.check()["changed"] is False  # not set yet
    reg_a.promote("production", a.get("export", fps[0]))
    assert follower.check()["export"] == fps[0] and loaded == [fps[0]]
    assert (tmp_path / "cache-b").is_dir() and not (a.root / "registry").exists()  # B read A's promotion from the bucket
    reg_a.promote("production", a.get("export", fps[1]))
    assert follower.check()["export"] == fps[1]
    Registry(b_store, "regtest").rollback("production", "from B")
    assert reg_a.resolve("production") == fps[0]

    errors = []

    def promote(i, fp):
        try:
            st = _store(store_url, tmp_path / f"cache-{i}")
            Registry(st, "regtest").promote(f"c{i % 2}", st.get("export", fp))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=promote, args=(i, fp)) for i, fp in enumerate(fps[2:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    history = reg_a.history()
    assert len(history) == 3 + 6 and {e.export for e in history if e.alias.startswith("c")} == set(fps[2:])


@pytest.mark.parametrize("args,named", [
    (("paths.store=ftp://host/store",), "must be s3://"),
    (("paths.store=s3://bucket/store", "paths.lease_s=0"), "paths.lease_s=0"),
    (("paths.store=s3://bucket/store", "+paths.store_options.no_such_option=1"), "paths.store_options"),
])
def test_a_bad_store_setting_is_refused_before_anything_runs_naming_the_key(cvops, args, named):
    r = cvops("recipe=quickstart", "stages=[curate]", *args, timeout=120)
    assert r.returncode == 2 and named in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not cvops.calls()


def test_unreachable_s3_data_fails_curate_with_the_fix_and_nothing_is_cached(cvops, s3, tmp_path):
    """No credentials for the data bucket: the fingerprint still computes, curate stops naming the URL and
    what to check, and no artifact is committed (the next run with credentials builds)."""
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    r = cvops("recipe=quickstart", "stages=[curate]", "data=yolo", "data.path=s3://nobucket/cells/data.yaml",
              env=env, timeout=120)
    assert r.returncode != 0
    assert "s3://nobucket/cells" in r.stderr and "AWS" in r.stderr, r.stderr[-2000:]
    assert not list(cvops.store.glob("curate/*/manifest.json"))
