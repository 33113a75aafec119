"""Several runs writing into one FiftyOne dataset at once (a sweep's jobs evaluating into the dataset of the
curate artifact they share): every field each one adds is there afterwards, on the tests' real mongod."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

WRITER = textwrap.dedent('''
    import sys, time
    import fiftyone as fo
    from cvops.fo import edit_dataset, load_dataset
    name, who, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    while time.time() < float(sys.argv[4]):  # start together
        time.sleep(0.005)
    for k in range(6):
        if mode == "lease":
            with edit_dataset(name) as ds:
                ds.add_sample_field(f"pred_{who}_{k}", fo.StringField)
        else:  # what the stages did before: a process's own copy of the dataset, no lease
            ds = load_dataset(name)
            ds.add_sample_field(f"pred_{who}_{k}", fo.StringField)
''')


def _race(name, mode, writers=4):
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, name, str(w), mode, str(start)],
                              stderr=subprocess.PIPE, text=True) for w in range(writers)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    import fiftyone as fo

    ds = fo.load_dataset(name)
    ds.reload()  # this process's copy may predate the writers' fields
    fields = set(ds.get_field_schema())
    return {f"pred_{w}_{k}" for w in range(writers) for k in range(6)} - fields, [e for e in errors if e.strip()]


def test_concurrent_writers_keep_every_field():
    from cvops.fo import connect

    fo = connect()
    name = f"lease-{uuid.uuid4().hex[:8]}"
    fo.Dataset(name, persistent=True).add_sample(fo.Sample(filepath="/nonexistent/a.jpg"))
    try:
        lost, errors = _race(name, "lease")
        assert not errors, errors[0][-2000:]
        assert lost == set()
    finally:
        fo.delete_dataset(name)


def test_a_dead_holders_lease_expires_and_a_live_one_is_waited_for():
    import fiftyone.core.odm.database as fod

    from cvops.fo import connect, dataset_lease

    connect()
    name = f"lease-{uuid.uuid4().hex[:8]}"
    locks = fod.get_db_conn()["cvops_locks"]
    locks.insert_one({"_id": f"dataset:{name}", "owner": "dead", "expires": time.time() - 1})
    t0 = time.monotonic()
    with dataset_lease(name):
        assert time.monotonic() - t0 < 5
        with pytest.raises(TimeoutError, match=rf"dataset '{name}' has been held by another cvops process.*pid {os.getpid()}"):
            with dataset_lease(name, wait_s=0.5):
                pass
    assert locks.find_one({"_id": f"dataset:{name}"}) is None  # released


def test_two_exports_keep_their_own_mismatch_tags_in_the_shared_dataset():
    """Every export of one curate artifact tags the same dataset: rebuilding one leaves the other's tags alone."""
    from cvops.export.stage import mismatch_tag, tag_disagreements
    from cvops.fo import connect

    fo = connect()
    name = f"tags-{uuid.uuid4().hex[:8]}"
    ds = fo.Dataset(name, persistent=True)
    ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(3)])
    try:
        a, b = mismatch_tag("onnx", "a" * 16), mismatch_tag("onnx", "b" * 16)
        assert a != b
        tag_disagreements(name, [{"file_name": "/nonexistent/0.jpg"}], a)
        tag_disagreements(name, [{"file_name": "/nonexistent/1.jpg"}], b)
        tag_disagreements(name, [{"file_name": "/nonexistent/0.jpg"}], a)  # export A rebuilt
        counts = fo.load_dataset(name).count_sample_tags()
        assert counts == {a: 1, b: 1}
    finally:
        fo.delete_dataset(name)


def test_a_deleted_dataset_names_its_artifact_and_removing_it_rebuilds_only_curate(tmp_path, monkeypatch):
    """A curate artifact whose dataset was deleted outside cvops: evaluate stops before any work, naming the
    artifact; removing that artifact (as the message says) rebuilds curate and its dataset under the same
    fingerprint, and train comes back from the cache."""
    import json
    import shutil

    from cvops import stages
    from cvops.config import compose_config
    from cvops.fo import DatasetMissing, connect
    from cvops.runner import Runner, StageResult

    def fake_train(ctx):
        (ctx.workdir / "weights.txt").write_text("w")
        return StageResult({"checkpoint": "weights.txt", "config": "weights.txt"}, {"val_mAP": 0.1})

    monkeypatch.setitem(stages._REGISTRY, "train", fake_train)
    base = ["recipe=quickstart", "project=gone", f"paths.store={tmp_path / 'store'}", "data.synthetic.num_images=12",
            "data.synthetic.videos=0", "tracker=none"]
    cfg = compose_config([*base, "stages=[curate,train]"])
    Runner(cfg, tmp_path / "r1").run()
    curate = json.loads((tmp_path / "r1" / "run.json").read_text())["stages"]["curate"]
    name, folder = curate["metrics"]["dataset_name"], curate["artifacts"]["dir"]
    fo = connect()
    fo.delete_dataset(name)
    with pytest.raises(DatasetMissing, match=rf"'{name}'.*remove that artifact \({folder};.*keeps every other artifact"):
        Runner(compose_config([*base, "stages=[curate,train,evaluate]"]), tmp_path / "r2").run()
    shutil.rmtree(folder)
    Runner(cfg, tmp_path / "r3").run()
    stages = json.loads((tmp_path / "r3" / "run.json").read_text())["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {"curate": "ran", "train": "cached"}
    assert stages["curate"]["fingerprint"] == curate["fingerprint"] and fo.dataset_exists(name)
    fo.delete_dataset(name)
