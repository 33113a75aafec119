"""A third-party stage, installed as a package, runs through a recipe like a built-in one.

The plug-in (tests/fixtures/cvops_audit) is installed with pip into a folder
of its own and put on PYTHONPATH for the cvops processes: its ``cvops.stages``
entry point, config group and schema come from the installed distribution,
exactly as they would for a team's package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "cvops_audit"
SMALL = ["data.synthetic.num_images=24", "data.synthetic.videos=0"]

pytestmark = pytest.mark.slow

RECIPE = """\
# @package _global_
# quickstart's data, audited before training
defaults:
  - /audit: default
  - override /data: synthetic

project: audited
stages: [curate, audit]
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site, src = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "cvops_audit"
    shutil.copytree(FIXTURE, src)  # setuptools writes build/ beside the sources: not into the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    recipes = tmp_path_factory.mktemp("recipes")
    (recipes / "audited.yaml").write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "CVOPS_RECIPE_PATH": str(recipes), "WANDB_MODE": "offline"}
    return env


def cvops(env, cwd, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "cvops", *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"cvops {' '.join(args)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def last_run(tmp: Path) -> dict:
    runs = sorted(tmp.glob("outputs/audited/*/*/run.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


def fingerprints(env, *overrides) -> dict:
    code = ("import json,sys; from cvops.config import compose_config; from cvops.fingerprint import fingerprints; "
            "fps = fingerprints(compose_config(sys.argv[1:])); "
            "print(json.dumps({k: {'fp': v['fingerprint'], 'inputs': v['inputs']} for k, v in fps.items()}))")
    r = subprocess.run([sys.executable, "-c", code, *overrides], env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_plugin_stage_runs_is_cached_and_feeds_train(plugin_env, tmp_path):
    store = f"paths.store={tmp_path / 'store'}"
    cvops(plugin_env, tmp_path, "recipe=audited", store, *SMALL)
    first = last_run(tmp_path)
    assert first["stages"]["audit"]["status"] == "ran", first["stages"]
    counts = first["stages"]["audit"]["metrics"]["boxes_per_class"]
    assert set(counts) == {"circle", "square", "triangle"} and all(v > 0 for v in counts.values())

    cvops(plugin_env, tmp_path, "recipe=audited", store, *SMALL)
    second = last_run(tmp_path)
    assert {k: v["status"] for k, v in second["stages"].items()} == {"curate": "cached", "audit": "cached"}
    # the cached stage's report is published into the new run dir too (by the runner, not the stage)
    run_dir = Path(sorted(tmp_path.glob("outputs/audited/*/*/run.json"), key=lambda p: p.stat().st_mtime)[-1]).parent
    assert json.loads((run_dir / "audit" / "audit.json").read_text())["train"] == counts

    # its own config is part of its fingerprint, and its fingerprint is part of train's
    base = fingerprints(plugin_env, "recipe=audited", store, *SMALL)
    changed = fingerprints(plugin_env, "recipe=audited", store, *SMALL, "audit.min_boxes_per_class=2")
    assert base["train"]["inputs"] == {"curate": base["curate"]["fp"], "audit": base["audit"]["fp"]}
    assert changed["curate"]["fp"] == base["curate"]["fp"]
    assert changed["audit"]["fp"] != base["audit"]["fp"]
    for downstream in ("train", "evaluate", "export", "monitor"):
        assert changed[downstream]["fp"] != base[downstream]["fp"], downstream
    cvops(plugin_env, tmp_path, "recipe=audited", store, *SMALL, "audit.min_boxes_per_class=2")
    third = last_run(tmp_path)
    assert third["stages"]["curate"]["status"] == "cached" and third["stages"]["audit"]["status"] == "ran"

    # a failing plug-in fails its stage like a built-in one, with its own message
    r = cvops(plugin_env, tmp_path, "recipe=audited", store, *SMALL, "audit.min_boxes_per_class=100000", check=False)
    assert r.returncode != 0 and "fewer than 100000 train boxes" in (r.stdout + r.stderr)


def test_plugin_not_selected_leaves_the_graph_as_it_was(plugin_env, tmp_path):
    store = f"paths.store={tmp_path / 'store'}"
    with_plugin_installed = fingerprints(plugin_env, "recipe=quickstart", store)
    assert "audit" not in with_plugin_installed
    assert with_plugin_installed["train"]["inputs"] == {"curate": with_plugin_installed["curate"]["fp"]}
    plain = {k: v for k, v in os.environ.items()}
    without = fingerprints({**plain, "PYTHONPATH": plain.get("PYTHONPATH", "")}, "recipe=quickstart", store)
    assert {k: v["fp"] for k, v in without.items()} == {k: v["fp"] for k, v in with_plugin_installed.items()}
    # asked to run without its group selected: a clear error that says how to select it
    r = cvops(plugin_env, tmp_path, "recipe=quickstart", store, "stages=[curate,audit]", check=False)
    assert r.returncode != 0
    assert "audit" in r.stderr and "audit=default" in r.stderr, r.stderr[-2000:]
    # a typo in its keys is refused like any other, by its schema
    r = cvops(plugin_env, tmp_path, "recipe=audited", store, "audit.min_boxes=3", check=False)
    assert r.returncode != 0 and "min_boxes_per_class" in r.stderr, r.stderr[-2000:]


def test_the_compose_cache_with_a_plugin_installed(plugin_env, tmp_path):
    """With a plug-in installed the recipe schema grows a section per plug-in (one class, pickled by name): a
    recipe that does not select the plug-in is cached and served exactly; one that selects it is composed on
    every run (the plug-in's schema is code whose defaults may read files or the machine)."""
    import time

    env = {**plugin_env, "CVOPS_CACHE_DIR": str(tmp_path / "cache")}
    time.sleep(2.2)  # the plug-in and the recipe were just written: files that changed as a process starts are
    #                  not cached (cvops.composecache.SETTLE_NS)
    first = cvops(env, tmp_path, "recipe=quickstart", "--cfg", "job").stdout
    (entry,) = (tmp_path / "cache").glob("compose-*/*.pkl")
    inode = entry.stat().st_ino
    again = cvops(env, tmp_path, "recipe=quickstart", "--cfg", "job").stdout
    assert [p.stat().st_ino for p in (tmp_path / "cache").glob("compose-*/*.pkl")] == [inode], "not a hit"
    composed = cvops({**env, "CVOPS_COMPOSE_CACHE": "0"}, tmp_path, "recipe=quickstart", "--cfg", "job").stdout
    assert first == again == composed
    audited = [cvops(env, tmp_path, "recipe=audited", "--cfg", "job").stdout for _ in range(2)]
    assert audited[0] == audited[1] and "min_boxes_per_class" in audited[0]
    assert len(list((tmp_path / "cache").glob("compose-*/*.pkl"))) == 1, "a plug-in's schema was cached"


def test_entry_point_scan_equals_importlib_metadata_for_every_group():
    """cvops reads entry points without importlib.metadata's per-group scans: same answer for every group
    installed here (console scripts, pytest plug-ins, ... and cvops' own), in the same order."""
    import importlib.metadata

    from cvops import entrypoints

    ours = entrypoints.scan()
    groups = set(ours) | set(importlib.metadata.entry_points().keys())
    assert len(groups) > 5  # a real environment: console_scripts, pytest11, hydra/fiftyone plug-ins...
    for g in groups:
        mine = [(e.name, e.value, e.dist) for e in ours.get(g, ())]
        theirs = [(e.name, e.value, e.dist.name if e.dist else None) for e in importlib.metadata.entry_points(group=g)]
        assert [m[:2] for m in mine] == [t[:2] for t in theirs], g
        assert all(m[2] is not None for m in mine)
    assert entrypoints.scan("cvops.") == {g: v for g, v in ours.items() if g.startswith("cvops.")}
