"""Store housekeeping (``cvops store gc``): the dry run lists exactly what no committed artifact or registry alias
refers to, ``--apply`` removes exactly that, on a folder store and on an ``s3://`` store (moto's server)."""

from __future__ import annotations

import json
import time

import pytest
from helpers.s3 import use

from cvops.store import FolderStore, StoreError
from cvops.store.housekeeping import gc
from cvops.store.registry import Registry

STAGES = ("curate", "train", "evaluate", "export", "reference")
CURATE, TRAIN, EVAL = "c0c0c0c0c0c0c0c0", "7a7a7a7a7a7a7a7a", "e7e7e7e7e7e7e7e7"
LIVE, ALIASED, GONE = "e1e1e1e1e1e1e1e1", "e2e2e2e2e2e2e2e2", "e3e3e3e3e3e3e3e3"
FAILED, KILLED, HELD = "fa11fa11fa11fa11", "dead0000dead0000", "b0b0b0b0b0b0b0b0"


def commit(store, stage, fp, inputs=None, files=None, project="gctest"):
    with store.build(stage, fp) as b:
        assert b is not None
        for rel, data in (files or {"out.bin": b"x" * 100}).items():
            (b.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (b.dir / rel).write_bytes(data)
        return b.commit({"stage": stage, "fingerprint": fp, "config": {"project": project}, "inputs": inputs or {},
                         "artifacts": {"out": next(iter(files or {"out.bin": b""}))}, "metrics": {"gate": "pass"}})


def failed_build(store, stage, fp, nbytes=1000):
    """A build whose stage raised (a failed gate, StaleCode): its files stay, without a manifest."""
    with pytest.raises(RuntimeError):
        with store.build(stage, fp) as b:
            (b.dir / "model.onnx").write_bytes(b"m" * nbytes)
            raise RuntimeError("export gate failed")


def populate(store):
    """A committed lineage, a committed export behind an alias, an aliased export whose manifest was deleted
    since, an uncommitted build a committed artifact names as input, and one failed build (the garbage)."""
    commit(store, "curate", CURATE)
    failed_build(store, "train", TRAIN)  # kept: evaluate's manifest names it
    commit(store, "evaluate", EVAL, {"curate": CURATE, "train": TRAIN})
    live = commit(store, "export", LIVE, {"curate": CURATE, "train": TRAIN})
    aliased = commit(store, "export", ALIASED, {"curate": CURATE, "train": TRAIN})
    reg = Registry(store, "gctest")
    reg.promote("staging", aliased)
    reg.promote("production", live)
    failed_build(store, "export", FAILED, 1234)  # garbage: nothing refers to it


def test_folder_store_dry_run_lists_only_the_garbage_and_apply_removes_exactly_that(tmp_path):
    store = FolderStore(tmp_path / "store")
    populate(store)
    (store.dir("export", ALIASED) / "manifest.json").unlink()  # someone forced a rebuild; the alias still names it
    (store.root / "requests" / "gctest").mkdir(parents=True)
    (store.root / "requests" / "gctest" / "log.jsonl").write_text("{}\n")  # not a stage folder: never looked at
    (store.root / "export" / "notes").mkdir()  # not a fingerprint: not ours
    before = sorted(p for p in store.root.rglob("*"))

    assert gc(store, STAGES).garbage == []  # everything is younger than the default grace period
    report = gc(store, STAGES, grace_s=0)
    assert [(g.stage, g.fingerprint) for g in report.garbage] == [("export", FAILED)]
    assert report.nbytes == 1234 and "unfinished build" in report.garbage[0].why
    assert {(s, f) for s, f, _ in report.kept} == {("train", TRAIN), ("export", ALIASED)}
    assert sorted(p for p in store.root.rglob("*")) == before  # a dry run removes nothing
    assert "would remove" in report.lines()[0] and "1.2 KB to free" in report.lines()[-1]

    done = gc(store, STAGES, dry_run=False, grace_s=0)
    assert done.applied and done.freed == 1234
    assert sorted(p for p in store.root.rglob("*")) == [p for p in before if store.dir("export", FAILED) not in
                                                         (p, *p.parents)]
    assert store.get("export", LIVE) is not None and store.get("evaluate", EVAL) is not None
    assert Registry(store, "gctest").resolve("production") == LIVE
    assert gc(store, STAGES, grace_s=0).garbage == []


def test_folder_store_leaves_a_build_in_progress_alone(tmp_path):
    """A build that holds its lock is never listed, nor removed if it took the lock after the listing."""
    import subprocess
    import sys

    store = FolderStore(tmp_path / "store")
    failed_build(store, "train", HELD)
    listed = gc(store, STAGES, grace_s=0).garbage
    assert [g.fingerprint for g in listed] == [HELD]
    # another process takes the build lock (as a run resuming that build would)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; "
        f"l = FileLock({str(store.dir('train', HELD)) + '.lock'!r}); l.acquire(); print('held', flush=True); "
        "sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert gc(store, STAGES, grace_s=0).garbage == []
        assert store.remove(listed[0]) == 0 and store.dir("train", HELD).is_dir()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert store.remove(listed[0]) > 0 and not store.dir("train", HELD).exists()


def test_gc_refuses_what_it_cannot_judge(tmp_path):
    store = FolderStore(tmp_path / "store")
    with pytest.raises(StoreError, match="grace_s=-1"):
        gc(store, STAGES, grace_s=-1)
    with pytest.raises(StoreError, match="stage folder names"):
        gc(store, ["../etc"])
    commit(store, "curate", CURATE)
    (store.dir("curate", CURATE) / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt manifest"):  # what it refers to is unknown: nothing is removed
        gc(store, STAGES, grace_s=0)


# --------------------------------------------------------------------------- s3
@pytest.fixture
def store_url(s3, monkeypatch):
    use(s3, monkeypatch)
    return f"s3://{s3.bucket()}/team/store"


def _s3(url, cache, lease_s=30.0):
    from cvops.store.s3 import ObjectStore

    return ObjectStore(url, {}, cache, lease_s)


def _keys(store):
    store.fs.invalidate_cache(store.key)
    return sorted(store.fs.find(store.key))


def test_s3_store_dry_run_lists_only_the_garbage_and_apply_removes_exactly_that(store_url, tmp_path):
    store = _s3(store_url, tmp_path / "cache-a", lease_s=1.0)
    populate(store)
    store.fs.rm_file(f"{store.key}/export/{ALIASED}/manifest.json")  # forced rebuild; the alias still names it
    # a killed build (SIGKILL mid-commit): its uploads, a pending file, and the lease it stopped renewing; its
    # local build folder in this machine's cache
    k = f"{store.key}/train/{KILLED}"
    for rel in ("b1ded1ded1de/model.pth", "b1ded1ded1de/report/loss.png"):
        store.fs.pipe_file(f"{k}/{rel}", b"k" * 500)
    store.fs.pipe_file(f"{k}.pending/config.py", b"cfg")
    lease = json.dumps({"holder": "gone", "lease_s": 1.0}).encode()
    store.fs.pipe_file(f"{k}.lease", lease)
    (store.dir("train", KILLED)).mkdir(parents=True)
    (store.dir("train", KILLED) / "epoch_1.pth").write_bytes(b"c" * 700)
    # a build that lost the commit race for the committed curate: its copy under its own build id
    store.fs.pipe_file(f"{store.key}/curate/{CURATE}/10sec0py0000/out.bin", b"l" * 300)
    # a live build on another machine: its lease is renewed (lease_s=3: every second)
    other = _s3(store_url, tmp_path / "cache-b", lease_s=3.0)
    live_ctx = other.build("train", HELD)
    live = live_ctx.__enter__()
    try:
        store.fs.pipe_file(f"{store.key}/train/{HELD}/{live.build_id}/model.pth", b"h" * 10)  # uploading now
        time.sleep(1.5)  # the killed build's lease is older than its lease_s now
        before = _keys(store)

        assert gc(store, STAGES).garbage == []  # all of it is younger than the default grace period
        report = gc(store, STAGES, grace_s=0)
        found = {(g.stage, g.fingerprint, g.where.startswith("s3://")): g for g in report.garbage}
        assert set(found) == {("train", KILLED, True), ("train", KILLED, False), ("curate", CURATE, True),
                              ("export", FAILED, False)}, report.lines()
        killed = found["train", KILLED, True]
        assert killed.nbytes == 1003 + len(lease) and len(killed.targets) == 4 and "unfinished build" in killed.why
        assert found["curate", CURATE, True].nbytes == 300 and "lost the commit" in found["curate", CURATE, True].why
        assert found["train", KILLED, False].nbytes == 700
        # the failed export was never uploaded (a build uploads at its commit): only this machine's folder
        assert found["export", FAILED, False].where == str(store.dir("export", FAILED))
        assert {(s, f) for s, f, _ in report.kept} >= {("export", ALIASED)}
        assert _keys(store) == before and store.dir("train", KILLED).is_dir()  # a dry run removes nothing

        done = gc(store, STAGES, dry_run=False, grace_s=0)
        assert done.freed == 1003 + len(lease) + 300 + 700 + 1234
        gone = {t for g in report.garbage for t in g.targets}
        assert _keys(store) == [k for k in before if k not in gone]
        assert not any(k.startswith(f"{store.key}/train/{KILLED}") for k in _keys(store))
        assert not store.dir("train", KILLED).exists() and not store.dir("export", FAILED).exists()
        assert other.fs.exists(f"{store.key}/train/{HELD}/{live.build_id}/model.pth")  # the live build is whole
        # what is committed is whole: a machine with an empty cache reads and verifies every file
        fresh = _s3(store_url, tmp_path / "cache-c")
        for stage, fp in (("curate", CURATE), ("evaluate", EVAL), ("export", LIVE)):
            assert fresh.get(stage, fp).path("out").read_bytes() == b"x" * 100
        assert Registry(fresh, "gctest").resolve("production") == LIVE
        assert any(k.startswith(f"{store.key}/export/{ALIASED}/") for k in _keys(store))  # the alias keeps it
    finally:
        live_ctx.__exit__(None, None, None)
    # that build ended without a commit (its lease released): now its upload is garbage too, and nothing else
    assert [(g.stage, g.fingerprint) for g in gc(store, STAGES, grace_s=0).garbage] == [("train", HELD)]


def test_cvops_store_gc_command(tmp_path, capsys):
    from cvops.commands.store import main

    store = FolderStore(tmp_path / "store")
    failed_build(store, "export", FAILED, 2000)
    commit(store, "curate", CURATE)
    args = ["gc", "recipe=quickstart", f"paths.store={store.root}", "--grace-s", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"export/{FAILED}" in out and "dry run" in out and "2.0 KB to free" in out and CURATE not in out
    assert store.dir("export", FAILED).is_dir()
    assert main([*args, "--apply"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "2.0 KB freed" in out
    assert not store.dir("export", FAILED).exists() and store.get("curate", CURATE) is not None
    assert main(["gc", "recipe=quickstart", f"paths.store={store.root}", "--grace-s", "-1"]) == 2
    assert "cvops: error: grace_s=-1" in capsys.readouterr().err


def test_both_stores_implement_the_one_protocol(store_url, tmp_path):
    """The runner, the registry and housekeeping see only :class:`cvops.store.base.Store`: each implementation has
    every member, with the same parameters."""
    import inspect

    from cvops.store import Store

    members = [n for n, v in vars(Store).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))]
    assert {"get", "build", "manifest", "artifacts", "garbage", "remove", "spec"} <= set(members)
    for store in (FolderStore(tmp_path / "f"), _s3(store_url, tmp_path / "c")):
        assert isinstance(store, Store) and hasattr(store, "root") and hasattr(store, "url")
        for name in members:
            want = getattr(Store, name)
            got = getattr(type(store), name)
            if callable(want):
                assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters), \
                    (type(store).__name__, name)


@pytest.mark.parametrize("body", [b"\xff not json", b"[1, 2]", b'{"lease_s": "soon"}'])
def test_s3_gc_judges_a_lease_it_cannot_read_by_the_stores_own_lease(store_url, tmp_path, body):
    """A lease object that is not a cvops lease (garbage bytes, a list, a text lease_s) neither crashes gc nor
    keeps its build forever: it is judged by this store's lease_s, like a lease that stopped being renewed."""
    store = _s3(store_url, tmp_path / "cache", lease_s=2.5)
    k = f"{store.key}/train/{KILLED}"
    store.fs.pipe_file(f"{k}/b1ded1ded1de/model.pth", b"k" * 50)
    t0 = time.monotonic()
    store.fs.pipe_file(f"{k}.lease", body)
    fresh = gc(store, STAGES, grace_s=0).garbage
    # S3 keeps whole seconds of LastModified: an object can look up to 1 s older than it is
    if time.monotonic() - t0 < 1.4:  # judged within lease_s of its write (a loaded machine may take longer)
        assert [(g.stage, g.fingerprint) for g in fresh] == []  # fresh: maybe live
    time.sleep(max(0.0, 3.6 - (time.monotonic() - t0)))
    found = gc(store, STAGES, grace_s=0).garbage
    assert [(g.stage, g.fingerprint) for g in found] == [("train", KILLED)]
    assert found[0].nbytes == 50 + len(body)
