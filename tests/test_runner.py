"""The runner: fingerprints, cache hits and misses, run.json, upstream pulls."""

from __future__ import annotations

import json
import re

import pytest

from cvops.store import FolderStore
from cvops.config import compose_config
from cvops.fingerprint import fingerprints
from cvops.runner import ORDER, Runner

RUN_KEYS = {"recipe", "project", "config_hash", "git_sha", "versions", "stages", "status", "headline"}
VERSION_KEYS = {"python", "torch", "mmdet", "mmcv", "mmengine", "fiftyone", "onnxruntime", "tensorrt"}


@pytest.fixture
def run(tmp_path, test_stages, monkeypatch):
    monkeypatch.setenv("CVOPS_TEST_LOG", str(tmp_path / "calls.log"))
    counter = iter(range(1000))

    def _run(*overrides, stages=("curate", "train", "evaluate")):
        cfg = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}",
                              f"stages=[{','.join(stages)}]", *overrides])
        run_dir = tmp_path / "runs" / str(next(counter))
        Runner(cfg, run_dir, recipe="quickstart").run()
        return json.loads((run_dir / "run.json").read_text())

    _run.calls = lambda: [l.split()[0] for l in (tmp_path / "calls.log").read_text().splitlines()] \
        if (tmp_path / "calls.log").exists() else []
    _run.store = FolderStore(tmp_path / "store")
    return _run


def statuses(manifest):
    return {k: v["status"] for k, v in manifest["stages"].items()}


def test_first_run_builds_second_reuses(run):
    first = run()
    assert statuses(first) == {"curate": "ran", "train": "ran", "evaluate": "ran"}
    second = run()
    assert statuses(second) == {"curate": "cached", "train": "cached", "evaluate": "cached"}
    assert run.calls() == ["curate", "train", "evaluate"]
    for name in ("curate", "train", "evaluate"):
        assert first["stages"][name]["fingerprint"] == second["stages"][name]["fingerprint"]
        assert second["stages"][name]["metrics"] == first["stages"][name]["metrics"]
        assert "in the store" in second["stages"][name]["reason"]


def test_changing_a_train_key_reruns_train_and_later_not_curate(run):
    first = run()
    second = run("train.lr=0.01")
    assert statuses(second) == {"curate": "cached", "train": "ran", "evaluate": "ran"}
    assert second["stages"]["curate"]["fingerprint"] == first["stages"]["curate"]["fingerprint"]
    assert second["stages"]["train"]["fingerprint"] != first["stages"]["train"]["fingerprint"]
    assert second["stages"]["evaluate"]["fingerprint"] != first["stages"]["evaluate"]["fingerprint"]
    assert run.calls() == ["curate", "train", "evaluate", "train", "evaluate"]


def test_changing_data_reruns_everything(run):
    run()
    second = run("data.synthetic.seed=7")
    assert statuses(second) == {"curate": "ran", "train": "ran", "evaluate": "ran"}


def test_changing_a_key_outside_the_stage_keeps_its_cache(run):
    run()
    again = run("tracker=none", "train.resume=true", "leaderboard.metric=evaluate.mAP")
    assert set(statuses(again).values()) == {"cached"}


def test_subset_pulls_cached_upstream(run):
    run(stages=("curate", "train"))
    only_eval = run(stages=("evaluate",))
    assert only_eval["stages"]["evaluate"]["status"] == "ran"
    assert only_eval["stages"]["train"]["status"] == "cached"  # pulled in as input
    assert run.calls() == ["curate", "train", "evaluate"]


def test_not_implemented_stage_is_skipped_with_reason_and_blocks_dependants(run, monkeypatch):
    import cvops.runner as runner

    real = runner.implementation
    monkeypatch.setattr(runner, "implementation", lambda name: None if name == "export" else real(name))
    m = run(stages=("curate", "train", "evaluate", "export", "monitor"))
    assert m["stages"]["export"]["status"] == "skipped"
    assert "not implemented" in m["stages"]["export"]["reason"] and "issue #5" in m["stages"]["export"]["reason"]
    assert m["stages"]["monitor"]["status"] == "skipped"
    assert "input 'export'" in m["stages"]["monitor"]["reason"]
    assert m["status"] == "ok"


def test_partly_skipped_stage_keeps_its_artifact_and_says_so_again_from_cache(run):
    from cvops.runner import StageResult, register_stage

    built = []

    def export(ctx):
        built.append(ctx.fingerprint)
        (ctx.workdir / "model.onnx").write_text("graph")
        return StageResult({"onnx": "model.onnx"}, {"gate": "pass"}, skipped="no GPU here; run X on a GPU host")

    register_stage("export", export)
    try:
        first = run(stages=("curate", "train", "export"))
        second = run(stages=("curate", "train", "export"))
    finally:
        register_stage("export", None)
    for m in (first, second):
        ex = m["stages"]["export"]
        assert ex["status"] == "skipped" and "no GPU here" in ex["reason"]
        assert ex["metrics"] == {"gate": "pass"} and open(ex["artifacts"]["onnx"]).read() == "graph"
    assert "cached" in second["stages"]["export"]["reason"]
    assert len(built) == 1 and run.calls() == ["curate", "train"]  # built once, then reused


def test_failed_stage_is_recorded_and_nothing_is_complete(run):
    with pytest.raises(FloatingPointError):
        run("train.lr=5")
    manifests = sorted(run.store.root.glob("train/*/manifest.json"))
    assert manifests == []  # the failed build left no complete artifact
    m = json.loads(sorted((run.store.root.parent / "runs").glob("*/run.json"))[-1].read_text())
    assert m["status"] == "failed"
    assert m["stages"]["train"]["status"] == "failed" and "NaN" in m["stages"]["train"]["reason"]
    assert "evaluate" not in m["stages"]


def test_run_json_has_the_promised_fields(run):
    m = run()
    assert RUN_KEYS <= set(m)
    assert VERSION_KEYS <= set(m["versions"])
    assert m["versions"]["torch"].startswith("2.13")
    assert m["recipe"] == "quickstart" and m["project"] == "quickstart"
    assert len(m["config_hash"]) == 64
    for entry in m["stages"].values():
        assert {"status", "fingerprint", "seconds", "artifacts", "metrics"} <= set(entry)
    assert m["headline"] == {"metric": "evaluate.val_mAP", "mode": "max", "value": pytest.approx(0.04)}
    art = m["stages"]["train"]["artifacts"]
    assert json.loads(open(art["checkpoint"]).read())["train"]["train"]["lr"] == 0.004


def test_fingerprints_are_stable_and_cover_code():
    cfg = compose_config(["recipe=quickstart"])
    a, b = fingerprints(cfg), fingerprints(cfg)
    assert [a[s]["fingerprint"] for s in ORDER] == [b[s]["fingerprint"] for s in ORDER]
    assert all(len(a[s]["code"]) == 16 for s in ORDER)
    assert a["train"]["inputs"] == {"curate": a["curate"]["fingerprint"]}


def test_code_version_covers_the_cvops_modules_a_stage_imports():
    """Stages share layers: an edit to any module a stage uses must rebuild that stage's artifact."""
    from cvops.fingerprint import PKG_DIR, is_plumbing, source_closure

    def closure(stage):
        return {str(p.relative_to(PKG_DIR)) for p in source_closure(sorted((PKG_DIR / stage).rglob("*.py")))}

    # the parity gate's evaluator and the model loading are evaluate's too
    assert {"detector/coco.py", "detector/mmdet.py", "detector/checkpoint.py"} <= closure("export")
    assert {"detector/coco.py", "detector/mmdet.py"} <= closure("evaluate")
    assert {"drift/stats.py", "drift/gauges.py", "detector/runtime.py", "requestlog.py"} <= closure("serve")
    assert {"requestlog.py", "synthetic.py", "drift/profile.py"} <= closure("monitor")
    assert "evaluate/stage.py" not in closure("export") and "export/build.py" not in closure("evaluate")
    assert "fo.py" in closure("curate") and "__init__.py" in closure("curate")
    assert not any(is_plumbing(f) for f in closure("export"))  # the runner, store and config plumbing do not invalidate artifacts
    assert "serve/app.py" not in closure("export")  # and what a stage does not import does not either
    # the package's __init__ offers the Python API lazily: the API (and serve, drift, ... behind it) is a way in,
    # not part of what curate or train compute; an edit there must not retrain every model
    for stage in ("curate", "train", "evaluate", "export"):
        assert not {f for f in closure(stage) if f in ("api.py", "cli.py") or f.startswith(("serve/", "commands/"))}


def test_hooks_see_every_outcome_and_reports_reach_each_run_dir(tmp_path, test_stages, monkeypatch):
    """before/after/on_cached/on_failure are called once per stage; reports appear in the run dir whether the
    stage ran or was cached; a stage that tries to read an undeclared key gets an error naming it."""
    from cvops.runner import Hooks, ReportsHook, StageResult, register_stage

    events = []

    class Recorder(Hooks):
        def before_stage(self, ctx):
            events.append(("before", ctx.name))

        def after_stage(self, ctx, art, result):
            events.append(("after", ctx.name))

        def on_cached(self, art, run_dir):
            events.append(("cached", art.stage))

        def on_failure(self, ctx, error):
            events.append(("failure", ctx.name, type(error).__name__))

    def evaluate(ctx):
        (ctx.workdir / "plot.png").write_bytes(b"png")
        (ctx.workdir / "tables").mkdir()
        (ctx.workdir / "tables" / "ap.md").write_text("| class | AP |")
        return StageResult({"plot": "plot.png"}, {"val_mAP": 0.5}, reports=["plot.png", "tables"])

    register_stage("evaluate", evaluate)
    cfg = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}", "stages=[curate,train,evaluate]"])
    hooks = [Recorder(), ReportsHook()]
    Runner(cfg, tmp_path / "r1", hooks=hooks).run()
    assert events == [("before", "curate"), ("after", "curate"), ("before", "train"), ("after", "train"),
                      ("before", "evaluate"), ("after", "evaluate")]
    events.clear()
    Runner(cfg, tmp_path / "r2", hooks=hooks).run()
    assert events == [("cached", "curate"), ("cached", "train"), ("cached", "evaluate")]
    for run_dir in ("r1", "r2"):
        assert (tmp_path / run_dir / "evaluate" / "plot.png").read_bytes() == b"png"
        assert (tmp_path / run_dir / "evaluate" / "tables" / "ap.md").is_file()

    def nosy(ctx):
        return StageResult({}, {"lr": ctx.config.train.lr})  # evaluate does not declare train.lr

    register_stage("evaluate", nosy)
    events.clear()
    with pytest.raises(AttributeError, match="did not declare config key 'train.lr'"):
        Runner(compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}", "stages=[evaluate]",
                               "evaluate.max_det=7"]), tmp_path / "r3", hooks=hooks).run()
    assert ("failure", "evaluate", "AttributeError") in events


def test_library_versions_come_from_the_metadata_folder_names(tmp_path, monkeypatch):
    """run.json's versions and the fingerprints' library pins: dist-info and egg-info names on sys.path; a library
    that is nowhere is None (not a metadata search per absent library)."""
    import sys

    from cvops import manifest

    (tmp_path / "Some_Lib-1.2.3.dist-info").mkdir()
    (tmp_path / "old_lib-0.9-py3.11.egg-info").write_text("Metadata-Version: 1.0\nName: old-lib\nVersion: 0.9\n")
    (tmp_path / "dev_lib.egg-info").mkdir()
    (tmp_path / "dev_lib.egg-info" / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: dev-lib\nVersion: 4.5\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    manifest._installed.cache_clear()
    try:
        assert manifest.dist_version("some-lib") == "1.2.3"
        assert manifest.dist_version("old_lib") == "0.9"
        assert manifest.dist_version("dev-lib") == "4.5"  # no version in the name: its metadata is read
        assert manifest.dist_version("tensorrt") is None
    finally:
        manifest._installed.cache_clear()


def test_code_that_changes_while_its_stage_runs_is_not_cached(tmp_path, test_stages, monkeypatch):
    """A checkout during a long training: the result is not stored under the fingerprint of the code the run
    started with (nor the new code's); the next run, on settled code, builds and caches it."""
    import textwrap

    from cvops import runner, stages

    mod = tmp_path / "edited_stage.py"
    mod.write_text(textwrap.dedent('''
        from pathlib import Path
        from cvops.runner import StageResult

        def evaluate(ctx):
            me, mark = Path(__file__), "#" + " edited while it ran"
            if mark not in me.read_text():
                me.write_text(me.read_text() + "\\n" + mark + "\\n")  # git checkout, meanwhile
            (ctx.workdir / "x.txt").write_text("x")
            return StageResult({"x": "x.txt"}, {"val_mAP": 0.5})
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import edited_stage

    monkeypatch.setitem(stages._REGISTRY, "evaluate", edited_stage.evaluate)
    cfg = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}", "stages=[curate,train,evaluate]"])
    before = fingerprints(cfg)["evaluate"]["fingerprint"]
    with pytest.raises(runner.StaleCode, match="stage 'evaluate' was not cached: its code changed while it ran"):
        Runner(cfg, tmp_path / "r1").run()
    store = FolderStore(tmp_path / "store")
    after = fingerprints(cfg)["evaluate"]["fingerprint"]
    assert after != before and store.get("evaluate", before) is None and store.get("evaluate", after) is None
    assert json.loads((tmp_path / "r1" / "run.json").read_text())["stages"]["evaluate"]["status"] == "failed"
    Runner(cfg, tmp_path / "r2").run()
    assert store.get("evaluate", after) is not None


def test_a_cvops_file_newer_than_the_process_is_not_trusted_to_be_what_ran(tmp_path, monkeypatch):
    """A sweep's jobs share one process: a module imported by an earlier job may be older than the file the
    next job's fingerprint hashed."""
    from cvops import fingerprint
    from cvops.stages import declared

    train = declared()["train"]
    code = fingerprint.code_version(train, None)
    assert fingerprint.code_changed(train, None, code) is None
    monkeypatch.setattr(fingerprint, "STARTED", 0.0)  # every file of it is newer than this "process"
    assert re.match(r"cvops/\S+\.py changed after this process started", fingerprint.code_changed(train, None, code))
    assert fingerprint.code_changed(train, None, "0" * 16) == "its code changed while it ran"
