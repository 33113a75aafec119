"""The human step with real tools: the quickstart's monitor -> Label Studio (a real server) -> cvops review ->
the next curate; and the review dataset made ready for the App's annotation panel.

The annotator is played through Label Studio's REST API, the way its UI saves work.
"""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pytest

from cvops.fo import connect

# a model trained for seconds scores below 0.1: the export keeps boxes down to 0.005 and the monitor's
# low-confidence line sits at 0.04, so its edge cases carry boxes (prelabels) for the annotator to correct
SMALL = ("recipe=quickstart", "data.synthetic.num_images=40", "data.synthetic.videos=1",
         "data.synthetic.video_frames=12", "model.image_size=[128,128]", "train.max_epochs=6", "tracker=none",
         "export.int8=false", "export.latency_repeats=1", "export.score_thr=0.005", "monitor.window=30",
         "monitor.low_confidence=0.04")
KEY_ENV = "CVOPS_TEST_LS_KEY"


@pytest.fixture
def project():
    name = f"ann{uuid.uuid4().hex[:8]}"
    yield name
    fo = connect()
    for ds in fo.list_datasets():
        if ds.startswith(name):
            fo.delete_dataset(ds)


def _pixels(result: Dict[str, Any]) -> List[float]:
    v, w, h = result["value"], result["original_width"], result["original_height"]
    return [round(v["x"] * w / 100, 3), round(v["y"] * h / 100, 3), round(v["width"] * w / 100, 3),
            round(v["height"] * h / 100, 3)]


def _report(stdout: str) -> Dict[str, Any]:
    line = [x for x in stdout.splitlines() if x.strip().startswith("report: ")][-1]
    return json.loads(Path(line.split("report: ", 1)[1].strip()).read_text())


def test_label_studio_round_trip_from_the_monitor_to_the_next_curate(cvops, project, label_studio, tmp_path):
    ls = label_studio
    base = (*SMALL, f"project={project}")
    r = cvops(*base, "stages=[curate,train,export,monitor]", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the annotate command: this server, its key in the environment (never in the recipe); a low project-wide
    # confidence so the weak model's prelabels reach the annotator as boxes to correct
    an = (*base, "annotate.backend=labelstudio", f"annotate.url={ls.url}", f"annotate.api_key_env={KEY_ENV}",
          "confidence=0.01")
    env = {KEY_ENV: ls.key}

    # bad input first: no key, a wrong key, no server
    r = cvops("annotate", *an, timeout=300)
    assert r.returncode == 2 and f"annotate.api_key_env={KEY_ENV}: the variable is not set" in r.stderr, r.stderr
    r = cvops("annotate", *an, env={KEY_ENV: "wrong"}, timeout=300)
    assert r.returncode == 2 and f"refused the API key in ${KEY_ENV}" in r.stderr, r.stderr
    from helpers.net import free_port

    r = cvops("annotate", *an, f"annotate.url=http://127.0.0.1:{free_port()}", env=env, timeout=300)
    assert r.returncode == 2 and "cannot be reached" in r.stderr and "annotate.url" in r.stderr, r.stderr

    # push, and push again: no duplicate tasks
    r = cvops("annotate", *an, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    pushed = _report(r.stdout)
    pid, n = pushed["project"], pushed["pushed"]
    assert n >= 6 and pushed["tasks"] == n, pushed
    r = cvops("annotate", *an, env=env, timeout=300)
    assert r.returncode == 0 and _report(r.stdout)["pushed"] == 0, r.stdout + r.stderr
    tasks = ls.tasks(pid)
    assert len(tasks) == n and len({t["data"]["cvops_sample"] for t in tasks}) == n
    with_boxes = [t for t in tasks if len(t["predictions"][0]["result"]) >= 2]
    assert len(with_boxes) >= 4, [len(t["predictions"][0]["result"]) for t in tasks]

    # the annotator: moves one box, deletes one, adds one, skips one task, uses a label outside the classes
    moved, deleted, added, bad = with_boxes[:4]
    skipped = next(t for t in tasks if t not in with_boxes[:4])
    expected: Dict[str, List] = {}
    res = json.loads(json.dumps(moved["predictions"][0]["result"]))
    res[0]["value"]["x"] = max(0.0, res[0]["value"]["x"] - 5.0)
    ls.annotate(moved["id"], res)
    expected[moved["data"]["cvops_sample"]] = res
    res = deleted["predictions"][0]["result"][1:]
    ls.annotate(deleted["id"], res)
    expected[deleted["data"]["cvops_sample"]] = res
    new = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
           "original_width": added["predictions"][0]["result"][0]["original_width"],
           "original_height": added["predictions"][0]["result"][0]["original_height"],
           "value": {"x": 10.0, "y": 10.0, "width": 20.0, "height": 25.0, "rotation": 0,
                     "rectanglelabels": ["triangle"]}}
    res = [*added["predictions"][0]["result"], new]
    ls.annotate(added["id"], res)
    expected[added["data"]["cvops_sample"]] = res
    res = json.loads(json.dumps(bad["predictions"][0]["result"]))
    res[0]["value"]["rectanglelabels"] = ["dog"]
    ls.annotate(bad["id"], res)
    ls.annotate(skipped["id"], [], skip=True)

    r = cvops("annotate", *an, "--load", env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    loaded = _report(r.stdout)
    assert (loaded["finished"], loaded["skipped"], loaded["quarantined"], loaded["conflicts"]) == (3, 1, 1, 0), \
        [r["reasons"] for r in loaded["rows"]]
    assert loaded["unfinished"] == n - 5
    assert loaded["per_annotator"]["annotator@example.com"]["finished"] == 3
    [row] = loaded["rows"]
    assert row["kind"] == "quarantined" and row["sample_id"] == bad["data"]["cvops_sample"]
    assert "label 'dog' is not one of the project's classes" in row["reasons"][0]
    r = cvops("annotate", *an, "--load", env=env, timeout=300)  # loading again changes nothing
    assert _report(r.stdout)["unchanged"] == 5, r.stdout

    fo = connect()
    ds = fo.load_dataset(loaded["dataset"])
    s = ds[next(iter(expected))]
    assert s.annotator == "annotator@example.com" and s.ls_task and s.annotated_at
    assert "rejected" in ds[skipped["data"]["cvops_sample"]].tags
    q = ds[bad["data"]["cvops_sample"]]
    assert "quarantined" in q.tags and "reviewed" not in q.tags and "dog" in q.ls_quarantined  # kept, not dropped

    # export: exactly the corrected boxes
    r = cvops("review", *an, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ann = next(Path(w) for w in r.stdout.split() if w.endswith("annotations.json"))
    coco = json.loads(ann.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = {im["id"]: im["file_name"] for im in coco["images"]}
    got: Dict[str, List] = {}
    for a in coco["annotations"]:
        got.setdefault(by_image[a["image_id"]], []).append((names[a["category_id"]], [round(v, 1) for v in a["bbox"]]))
    want = {ds[sid].filepath: sorted((x["value"]["rectanglelabels"][0], [round(v, 1) for v in _pixels(x)])
                                     for x in res_list) for sid, res_list in expected.items()}
    assert {k: sorted(v) for k, v in got.items()} == want

    # the printed command curates the next dataset version with them
    line = r.stdout.strip().splitlines()[-1].strip()
    extra = [a for a in shlex.split(line) if a.startswith("data.extra=")]
    r = cvops(*base, *extra, "stages=[curate]", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cur = cvops.run_jsons()[-1]["stages"]["curate"]["metrics"]
    curated = fo.load_dataset(cur["dataset_name"])
    from fiftyone import ViewField as F

    for fp, boxes in want.items():
        view = curated.match((F("original_path") == fp) | (F("filepath") == fp))
        assert len(view) == 1, f"{fp} is not in the next dataset version"
        # curate's own checks still apply to reviewed labels (the weak model's tiny duplicates may go)
        assert 0 < len(view.first().ground_truth.detections) <= len(boxes)
    s = curated.match((F("original_path") == ds[added["data"]["cvops_sample"]].filepath)).first()
    w, h = new["original_width"], new["original_height"]
    assert any(d.label == "triangle" and [round(v * n, 1) for v, n in zip(d.bounding_box, (w, h, w, h))] ==
               [round(v, 1) for v in _pixels(new)] for d in s.ground_truth.detections)  # the box the annotator added

    # a conflict: a sample edited in FiftyOne after the push is not overwritten
    waiting = [t for t in tasks if not t["annotations"] and t["id"] not in {x["id"] for x in (moved, deleted,
                                                                                            added, bad, skipped)}]
    t = waiting[0]
    sample = ds[t["data"]["cvops_sample"]]
    sample["ground_truth"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample.save()
    ls.annotate(t["id"], [])
    r = cvops("annotate", *an, "--load", env=env, timeout=300)
    rep = _report(r.stdout)
    assert rep["conflicts"] == 1 and rep["rows"][0]["kind"] == "conflict", rep
    sample.reload()
    assert len(sample.ground_truth.detections) == 1 and sample.ls_conflict == "[]"

    # the project deleted in Label Studio: load says so, push makes a new one for the unfinished samples
    ls.delete_project(pid)
    r = cvops("annotate", *an, "--load", env=env, timeout=300)
    assert r.returncode == 2 and f"Label Studio project {pid}" in r.stderr and "is gone" in r.stderr, r.stderr
    r = cvops("annotate", *an, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    again = _report(r.stdout)
    assert again["project"] != pid and "is gone" in again["notes"][0]
    assert again["pushed"] == n - 5  # not the finished, skipped or quarantined ones; the conflicted one again
