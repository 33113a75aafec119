"""The automated loop on the quickstart: a champion, reviewed samples (the generator's true boxes), a tick that
trains and judges a challenger, a tick that has nothing to do, a busy lease, and a sabotaged challenger."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

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


def _shifted_traffic(root: Path, n: int, seed: int) -> Tuple[List[bytes], Dict[bytes, list]]:
    """``n`` generated images darker, noisier and on a background unseen in training (PNG: the request log keeps
    the pixels), and each one's true boxes keyed by a small thumbnail (the reviewer's answer key)."""
    import cv2
    from cvops.synthetic import Shift, SyntheticSpec, generate

    generate(root, SyntheticSpec(num_images=n, image_size=(320, 240), videos=0, seed=seed,
                                 shift=Shift(brightness=0.45, noise=10.0, background="checker")), progress=False)
    coco = json.loads((root / "annotations.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    pngs, truth = [], {}
    for im in coco["images"]:
        bgr = cv2.imread(str(root / im["file_name"]))
        pngs.append(cv2.imencode(".png", bgr)[1].tobytes())
        w, h = im["width"], im["height"]
        truth[_thumb(bgr).tobytes()] = [(cats[a["category_id"]], [a["bbox"][0] / w, a["bbox"][1] / h,
                                                                  a["bbox"][2] / w, a["bbox"][3] / h])
                                        for a in coco["annotations"] if a["image_id"] == im["id"]]
    return pngs, truth


def _thumb(bgr: Any) -> Any:
    import cv2

    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (16, 12), interpolation=cv2.INTER_AREA).astype("int16")


def _review_like_a_person(project: str, store: Path, truth: Dict[bytes, list]) -> int:
    """The reviewer: every edge case the monitor sent gets its true boxes (found by its pixels), tagged reviewed."""
    import cv2
    import numpy as np

    from cvops.annotate.review import review_dataset
    from cvops.store import FolderStore

    fo = connect()
    ds = fo.load_dataset(review_dataset(project, FolderStore(store).id))
    keys = list(truth)
    thumbs = np.stack([np.frombuffer(k, dtype="int16") for k in keys])
    n = 0
    for s in ds.iter_samples(autosave=True):
        t = _thumb(cv2.imread(s.filepath)).reshape(-1)
        best = int(np.abs(thumbs - t).sum(axis=1).argmin())
        s["ground_truth"] = fo.Detections(detections=[fo.Detection(label=c, bounding_box=b) for c, b in truth[keys[best]]])
        s.tags.append("reviewed")
        n += 1
    return n


def _post(url: str, pngs: List[bytes]) -> None:
    import httpx

    for png in pngs:
        r = httpx.post(f"{url}/v1/predict", files={"image": ("x.png", png, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text


@pytest.mark.slow
def test_the_loop_end_to_end_through_a_real_server_with_shadow_traffic(cvops, project, tmp_path):
    """Champion served; shifted traffic through the real server; the monitor finds drift and edge cases; a
    reviewer labels them; a tick trains a challenger on them and stages it; the server shadows it; the next tick
    promotes it and the server answers with it; then nothing to do. A lease held: exit 0 naming the holder. A
    sabotaged challenger, killed mid-training and run again, resumes and is rejected; production never moves."""
    import httpx

    from cvops.store import FolderStore
    from cvops.store.registry import Registry
    from helpers.net import free_port, wait_ready

    base = (*SMALL, f"project={project}", "loop.shadow.requests=8")
    t_loop = time.time()
    r = cvops(*base, "stages=[curate,train,evaluate,export]", timeout=900)  # (no champion yet: test_commands)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = cvops("promote", *base, "--alias", "production", timeout=300)
    assert r.returncode == 0, r.stderr
    reg = Registry(FolderStore(cvops.store), project)
    champion = reg.resolve("production")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = cvops.popen("serve", *base, f"serve.port={port}", "serve.alias=production", "serve.alias_poll_s=0.5",
                         "serve.shadow_alias=staging", "serve.shadow_rate=1.0", "serve.sample_rate=1.0")
    try:
        wait_ready(server, f"{url}/readyz")  # the champion loaded and warm
        assert httpx.get(f"{url}/v1/model").json()["fingerprint"] == champion
        pngs, truth = _shifted_traffic(tmp_path / "shifted", 60, seed=11)
        _post(url, pngs)

        r = cvops(*base, "stages=[monitor]", "monitor.source=null", "monitor.window=60", timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        mon = cvops.run_jsons()[-1]["stages"]["monitor"]["metrics"]
        assert mon["drift_detected"] is True and mon["edge_cases"] >= 10, mon
        reviewed = _review_like_a_person(project, cvops.store, truth)

        # a tick while another holds the lease: exit 0, naming the holder
        from cvops.loop.tick import lease

        with lease(cvops.store / "loop" / project) as holder:
            assert holder is None
            r = cvops("loop", *base, timeout=300)
            assert r.returncode == 0 and "is running (pid" in r.stdout, r.stdout + r.stderr

        r = cvops("loop", *base, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        d = _decision(r.stdout)
        f = d["figures"]
        assert d["decision"] == "staged", (d["reasons"], f)
        assert {t["trigger"] for t in d["triggers"]} == {"reviewed", "drift"} and d["champion"] == champion
        assert f["new_data"]["challenger"]["images"] > 0  # reviewed images the challenger held out
        assert f["new_data"]["challenger"]["mAP50"] > f["new_data"]["champion"]["mAP50"]
        assert f["benchmark"]["challenger"]["mAP50"] >= f["benchmark"]["champion"]["mAP50"] - 0.02
        assert f["gate"]["challenger"] == "pass" and f["latency_ms"]["champion"] > 0
        assert reg.resolve("staging") == d["challenger"] and reg.resolve("production") == champion
        report = Path(r.stdout.split("report: ")[1].split()[0]).read_text()
        assert report.count("<table>") == 2 and report.count("<polyline") >= 4  # PR curves, both models

        # the server runs the staged challenger beside the champion until the tick has its 8 requests
        shadow_log = cvops.store / "requests" / project / "shadow.jsonl"
        deadline = time.time() + 120
        while not shadow_log.is_file() or len(shadow_log.read_text().splitlines()) < 8:
            assert time.time() < deadline, "no shadow requests logged"
            _post(url, pngs[:4])
        assert httpx.get(f"{url}/v1/model").json()["fingerprint"] == champion
        r = cvops("loop", *base, timeout=300)
        assert r.returncode == 0 and "PROMOTED challenger" in r.stdout, r.stdout + r.stderr
        assert reg.resolve("production") == d["challenger"]
        deadline = time.time() + 60
        while httpx.get(f"{url}/v1/model").json()["fingerprint"] != d["challenger"]:
            assert time.time() < deadline, "the server did not swap to the challenger"
            time.sleep(0.3)
        _post(url, pngs[:2])
        loop_s = time.time() - t_loop
    finally:
        server.terminate()
        server.wait(timeout=30)
    done = json.loads((cvops.store / "loop" / project / d["tick"] / "decision.json").read_text())
    assert done["decision"] == "promoted" and done["figures"]["shadow"]["requests"] >= 8
    assert f"cvops loop tick {d['tick']}" in reg.history("production")[-1].message
    t0 = time.time()
    r = cvops("loop", *base, timeout=600)
    idle_s = time.time() - t0
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr
    assert "in the champion's data already" in r.stdout  # the reviewed samples went in with the promotion
    now = reg.resolve("production")
    print(f"loop figures: idle tick {idle_s:.1f} s; champion to promoted challenger {loop_s:.0f} s; {reviewed} reviewed")

    # a sabotaged challenger (two epochs from scratch), its tick killed mid-training: production untouched; the
    # next tick resumes from the checkpoint and rejects it with its reasons
    sab = (*base, "loop.warm_start=false", 'loop.retrain=["train.max_epochs=2"]', "--force")
    t0 = time.time()
    proc = cvops.popen("loop", *sab)
    deadline = time.time() + 600
    while not any(p.stat().st_mtime > t0 and "epoch_1" in p.read_text() for p in cvops.store.glob("train/*/last_checkpoint")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.1)
    proc.kill()  # the tick only: its child (the training) goes with it
    proc.wait(timeout=30)
    assert reg.resolve("production") == now
    r = cvops("loop", *sab, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming from" in cvops.logs() or "resuming from" in r.stdout + r.stderr, r.stdout
    bad = _decision(r.stdout)
    assert bad["decision"] == "rejected" and bad["reasons"], bad
    assert reg.resolve("production") == now
    assert (cvops.store / "loop" / project / bad["tick"] / "report.html").is_file()


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
