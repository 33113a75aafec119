"""The automated loop on the quickstart: a champion, reviewed samples (the generator's true boxes), a tick that
trains and judges a challenger, a tick that has nothing to do, a busy lease, and a sabotaged challenger."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from cvops.fo import connect

SMALL = ("recipe=quickstart", "data.synthetic.num_images=60", "data.synthetic.videos=0",
         "model.image_size=[128,128]", "train.max_epochs=12", "tracker=none", "export.int8=false",
         "export.latency_repeats=2")


def _reviewed(project: str, store: Path, root: Path, n: int) -> str:
    """``n`` new generated images in the store's review dataset, labelled with their true boxes, tagged
    reviewed: what a reviewer leaves after correcting edge cases."""
    from cvops.annotate.review import review_dataset
    from cvops.store import FolderStore
    from cvops.synthetic import SyntheticSpec, generate

    generate(root, SyntheticSpec(num_images=n, image_size=(320, 240), videos=0, seed=7), progress=False)
    coco = json.loads((root / "annotations.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    fo = connect()
    name = review_dataset(project, FolderStore(store).id)
    ds = fo.Dataset(name, persistent=True)
    for im in coco["images"]:
        w, h = im["width"], im["height"]
        s = fo.Sample(filepath=str((root / im["file_name"]).resolve()), tags=["reviewed"])
        s["ground_truth"] = fo.Detections(detections=[
            fo.Detection(label=cats[a["category_id"]], bounding_box=[a["bbox"][0] / w, a["bbox"][1] / h,
                                                                     a["bbox"][2] / w, a["bbox"][3] / h])
            for a in coco["annotations"] if a["image_id"] == im["id"]])
        ds.add_sample(s)
    return name


def _decision(stdout: str) -> Dict[str, Any]:
    line = next(x for x in stdout.splitlines() if x.strip().startswith("decision: "))
    return json.loads(Path(line.split("decision: ", 1)[1].split()[0]).read_text())


@pytest.mark.slow
def test_a_tick_trains_judges_and_records_a_challenger_then_has_nothing_to_do(cvops, project, tmp_path):
    from cvops.store import FolderStore
    from cvops.store.registry import Registry

    base = (*SMALL, f"project={project}")
    r = cvops(*base, "stages=[curate,train,evaluate,export]", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = cvops("loop", *base, timeout=300)
    assert r.returncode == 2 and "the loop needs a champion" in r.stderr, r.stderr
    r = cvops("promote", *base, "--alias", "production", timeout=300)
    assert r.returncode == 0, r.stderr
    reg = Registry(FolderStore(cvops.store), project)
    champion = reg.resolve("production")

    t0 = time.time()
    r = cvops("loop", *base, timeout=300)
    idle_s = time.time() - t0
    assert r.returncode == 0 and "nothing to do" in r.stdout and "no reviewed samples" in r.stdout, r.stdout + r.stderr
    print(f"idle tick: {idle_s:.1f} s")

    _reviewed(project, cvops.store, tmp_path / "new", 20)
    # a tick while another holds the lease: exit 0, naming the holder
    from cvops.loop.tick import lease

    with lease(cvops.store / "loop" / project) as holder:
        assert holder is None
        r = cvops("loop", *base, timeout=300)
        assert r.returncode == 0 and "is running (pid" in r.stdout, r.stdout + r.stderr
    r = cvops("loop", *base, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = _decision(r.stdout)
    assert d["decision"] in ("promoted", "rejected") and d["champion"] == champion
    assert [t["trigger"] for t in d["triggers"]][0] == "reviewed"
    f = d["figures"]
    assert set(f["benchmark"]) == {"champion", "challenger"} and f["benchmark"]["champion"]["images"] > 0
    assert "new_data" in f and f["new_data"]["challenger"]["images"] > 0  # reviewed images held out
    assert f["gate"]["challenger"] == "pass" and f["latency_ms"]["champion"] > 0
    assert any(o.startswith("curate.split.keep=") for o in d["challenger_overrides"])
    assert (Path(r.stdout.split("report: ")[1].split()[0])).read_text().count("<table>") == 2
    now = reg.resolve("production")
    assert now == (d["challenger"] if d["decision"] == "promoted" else champion)
    if d["decision"] == "promoted":
        assert f"cvops loop tick {d['tick']}" in reg.history("production")[-1].message

    # the next tick: the reviewed samples are in the champion's data (promoted), or the same inputs were
    # decided (rejected): no work either way
    t0 = time.time()
    r = cvops("loop", *base, timeout=600)
    assert r.returncode == 0 and ("nothing to do" in r.stdout or "were decided by tick" in r.stdout), r.stdout
    assert reg.resolve("production") == now

    # a sabotaged challenger (one epoch) is rejected with its reasons; production stays
    r = cvops("loop", *base, "loop.retrain=[train.max_epochs=1]", timeout=300)  # as the docs of Hydra forbid
    assert r.returncode == 2 and """'loop.retrain=["train.max_epochs=1"]'""" in r.stderr, r.stderr
    r = cvops("loop", *base, 'loop.retrain=["train.max_epochs=1"]', "--force", timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bad = _decision(r.stdout)
    assert bad["decision"] == "rejected" and bad["reasons"], bad
    assert reg.resolve("production") == now


def test_a_staged_challenger_waits_for_its_shadow_requests_then_is_promoted(project, tmp_path, capsys):
    """loop.shadow.requests=N: the challenger that passed offline waits on 'staging'; a tick with fewer than N
    shadow requests logged (by servers with serve.shadow_alias=staging) waits, the next one decides."""
    import shutil as sh

    from cvops.loop.tick import tick
    from cvops.store import FolderStore
    from cvops.store.registry import Registry

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_registry import put_export

    store = tmp_path / "store"
    champ, chall = "aaaa111122223333", "bbbb111122223333"
    put_export(store, champ, project=project)
    put_export(store, chall, project=project)
    reg = Registry(FolderStore(store), project)
    reg.promote("production", reg.store.get("export", champ))
    reg.promote("staging", reg.store.get("export", chall))
    root = store / "loop" / project
    (root / "t1").mkdir(parents=True)
    (root / "t1" / "decision.json").write_text(json.dumps({
        "project": project, "alias": "production", "champion": champ, "challenger": chall, "tick": "t1",
        "decision": "staged", "reasons": ["passed offline"], "triggers": [{"trigger": "reviewed"}], "figures": {}}))
    (root / "pending.json").write_text(json.dumps({"tick": "t1", "champion": champ, "challenger": chall,
                                                   "alias": "production", "requests": 4}))
    line = ["recipe=quickstart", f"project={project}", f"paths.store={store}", "loop.shadow.requests=4"]
    log = store / "requests" / project / "shadow.jsonl"
    log.parent.mkdir(parents=True)
    rec = {"live": champ, "shadow": chall, "f1": 0.9, "live_ms": 10.0, "shadow_ms": 11.0,
           "per_class": {"circle": {"tp": 9, "fp": 1, "fn": 1}}}
    log.write_text("".join(json.dumps(rec) + "\n" for _ in range(3)) + "not json\n")
    assert tick(line)["status"] == "waiting" and reg.resolve("production") == champ
    assert "3 of 4 shadow requests" in capsys.readouterr().out
    with open(log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    res = tick(line)
    assert res == {"status": "decided", "decision": "promoted", "tick": "t1"}
    assert reg.resolve("production") == chall and not (root / "pending.json").exists()
    d = json.loads((root / "t1" / "decision.json").read_text())
    assert d["figures"]["shadow"]["requests"] == 4 and d["figures"]["shadow"]["mean_f1"] == pytest.approx(0.9)
    assert "shadow traffic (4 requests)" in (root / "t1" / "report.html").read_text()
    sh.rmtree(root / "t1")


def test_the_review_state_read_without_fiftyone_follows_every_edit(project, tmp_path):
    """An idle tick reads the review dataset's state with pymongo and reuses the last export while it holds;
    an edited label or a newly tagged sample makes the next tick export again."""
    import os

    from cvops.loop.tick import _review_state, _reviewed
    from cvops.session import open_recipe
    from cvops.store import FolderStore
    from cvops.annotate.review import review_dataset
    from cvops.synthetic import SyntheticSpec, generate

    assert os.environ.get("FIFTYONE_DATABASE_URI")  # the tests' own MongoDB server
    recipe = open_recipe(["recipe=quickstart", f"project={project}", f"paths.store={tmp_path / 'store'}"],
                         check_missing=False)
    name = review_dataset(project, FolderStore(tmp_path / "store").id)
    assert _review_state(name) == [0, None] and _reviewed(recipe) is None
    generate(tmp_path / "shots", SyntheticSpec(num_images=2, image_size=(128, 96), min_size=16, max_size=48, videos=0, seed=3), progress=False)
    fo = connect()
    ds = fo.Dataset(name, persistent=True)
    for p in sorted((tmp_path / "shots" / "images").glob("*.jpg")):
        s = fo.Sample(filepath=str(p))
        s["ground_truth"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=[.1, .1, .3, .3])])
        ds.add_sample(s)
    first = ds.first()
    first.tags.append("reviewed")
    first.save()
    one = _reviewed(recipe)
    assert one["images"] == 1 and _reviewed(recipe) == one  # unchanged: the cached export
    first.ground_truth.detections[0].bounding_box = [.2, .2, .3, .3]
    first.save()
    moved = _reviewed(recipe)
    assert moved["images"] == 1 and moved["version"] != one["version"]  # an edited box: exported again
    last = ds.last()
    last.tags.append("reviewed")
    last.save()
    assert _reviewed(recipe)["images"] == 2


def test_a_broken_benchmark_or_shadow_setting_is_refused_naming_the_key(tmp_path):
    import dataclasses

    from cvops.errors import ConfigError
    from cvops.loop.tick import LoopError, _benchmark
    from cvops.config import compose_config
    from cvops.schema import ServeConfig
    from cvops.serve.limits import check

    for text in ("", "{not json", '{"images": []}', "[1, 2]"):
        bad = tmp_path / "bench.json"
        bad.write_text(text)
        cfg = compose_config(["recipe=quickstart", f"loop.benchmark={bad}"])
        with pytest.raises(LoopError, match="loop.benchmark="):
            _benchmark(tmp_path, None, None, None, cfg)
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="serve.shadow_rate"):
            check(dataclasses.replace(ServeConfig(), shadow_rate=rate))
