"""The human step with real tools: the quickstart's monitor -> Label Studio (a real server) -> cvops review ->
the next curate; and the review dataset made ready for the App's annotation panel.

The annotator is played through Label Studio's REST API, the way its UI saves work.
"""

from __future__ import annotations

import json
import shlex
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


# ------------------------------------------------------------ instance segmentation: masks survive the trip
SW, SH = 96, 64
CLASSES = ["circle", "square", "triangle"]


def _instances() -> List[Any]:
    """Two images' instance masks (whole image), labels and scores: a disc and a triangle; a square."""
    import cv2
    import numpy as np

    disc = np.zeros((SH, SW), np.uint8)
    cv2.circle(disc, (25, 30), 12, 1, -1)
    tri = np.zeros((SH, SW), np.uint8)
    cv2.fillPoly(tri, [np.array([[55, 50], [85, 50], [70, 15]], np.int32)], 1)
    sq = np.zeros((SH, SW), np.uint8)
    sq[10:40, 30:70] = 1
    return [[(disc.astype(bool), 0, 0.9), (tri.astype(bool), 2, 0.8)], [(sq.astype(bool), 1, 0.7)]]


def _seg_review(name: str, tmp_path: Path) -> List[Any]:
    """The review dataset as the monitor leaves it for a mask model (prelabels with masks)."""
    import cv2
    import numpy as np

    from cvops import masks as rle
    from cvops.detector.runtime import Detections
    from cvops.drift.profile import Seen
    from cvops.monitor.stage import to_review

    edge, truth = [], _instances()
    for i, inst in enumerate(truth):
        img = np.full((SH, SW, 3), 90, np.uint8)
        path = tmp_path / f"seg{i}.png"
        cv2.imwrite(str(path), img)
        boxes = []
        for m, _, _ in inst:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        d = Detections(np.array(boxes, np.float32), np.array([s for *_, s in inst], np.float32),
                       np.array([c for _, c, _ in inst]))
        edge.append((Seen(path.name, {"width": SW, "height": SH, "max_score": 0.9}, d, str(path),
                          masks=[rle.encode(m) for m, _, _ in inst]), ["near_threshold"]))
    assert to_review(name, edge, CLASSES, tmp_path, "fp", "test", "store-x") == 2
    return truth


def _exported_masks(res: Dict[str, Any]) -> Dict[str, List[Any]]:
    """file name -> [(label, mask)] of a review export."""
    from cvops import masks as rle

    coco = json.loads(Path(res["path"]).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    out: Dict[str, List[Any]] = {}
    for a in coco["annotations"]:
        seg, _ = rle.from_segmentation(a["segmentation"], SW, SH)
        out.setdefault(files[a["image_id"]], []).append((names[a["category_id"]], rle.decode(seg)))
    return out


def _iou(a: Any, b: Any) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_segmentation_masks_survive_label_studio(project, label_studio, tmp_path, monkeypatch):
    """Polygons in Label Studio: pushed from the prelabels' masks, one moved by the annotator, one accepted."""
    import numpy as np

    from cvops.annotate import labelstudio as ls
    from cvops.annotate.labels import polygons_to_mask
    from cvops.annotate.review import export_reviewed

    name = f"{project}-review"
    truth = _seg_review(name, tmp_path)
    monkeypatch.setenv(KEY_ENV, label_studio.key)
    kw = dict(masks=True, duplicate_iou=0.7, url=label_studio.url, key_env=KEY_ENV)
    pushed = ls.push(name, CLASSES, confidence=0.3, **kw)
    tasks = {t["data"]["cvops_file"]: t for t in label_studio.tasks(pushed["project"])}
    first = tasks["seg0.png"]["predictions"][0]["result"]
    assert [r["type"] for r in first] == ["polygonlabels", "polygonlabels"]
    moved = json.loads(json.dumps(first))
    for p in moved[0]["value"]["points"]:  # the disc, 10 px to the right
        p[0] += 100.0 * 10 / SW
    label_studio.annotate(tasks["seg0.png"]["id"], moved)
    label_studio.annotate(tasks["seg1.png"]["id"], tasks["seg1.png"]["predictions"][0]["result"])
    loaded = ls.load(name, CLASSES, **kw)
    assert loaded["finished"] == 2 and not loaded["rows"], loaded
    got = _exported_masks(export_reviewed(name, tmp_path / "out", CLASSES))
    disc = polygons_to_mask([[(x * SW / 100, y * SH / 100) for x, y in moved[0]["value"]["points"]]], SW, SH)
    assert np.array_equal(np.roll(truth[0][0][0], 10, axis=1), disc) or _iou(np.roll(truth[0][0][0], 10, axis=1),
                                                                            disc) > 0.95
    by_label = dict(got["seg0.png"])
    assert _iou(by_label["circle"], disc) > 0.99 and _iou(by_label["triangle"], truth[0][1][0]) > 0.97
    [(label, sq)] = got["seg1.png"]
    assert label == "square" and _iou(sq, truth[1][0][0]) > 0.97


def test_segmentation_in_the_app_edits_outlines_that_export_as_masks(project, tmp_path):
    """The App backend: 'outlines' (polylines) filled from the masks, with the classes as its label schema; a
    reviewer's edit of an outline is the exported mask."""
    import numpy as np

    from cvops.annotate.app import prepare
    from cvops.annotate.labels import polygons_to_mask
    from cvops.annotate.review import export_reviewed

    name = f"{project}-review"
    truth = _seg_review(name, tmp_path)
    res = prepare(name, CLASSES, masks=True, confidence=0.3, duplicate_iou=0.7)
    assert (res["field"], res["filled"], res["samples"]) == ("outlines", 2, 2)
    fo = connect()
    ds = fo.load_dataset(name)
    schema = ds.label_schemas["outlines"]
    assert schema["type"] == "polylines" and schema["classes"] == CLASSES and ds.active_label_schemas[0] == "outlines"
    s0, s1 = (ds.match({"filepath": str(tmp_path / f"seg{i}.png")}).first() for i in range(2))
    assert sorted(p.label for p in s0.outlines.polylines) == ["circle", "triangle"]
    # a reviewer drags the triangle 8 px to the left, and tags both samples
    tri = next(p for p in s0.outlines.polylines if p.label == "triangle")
    pts = [(x - 8 / SW, y) for x, y in tri.points[0]]  # dragged 8 px to the left
    tri.points = [pts]
    want = polygons_to_mask([[(x * SW, y * SH) for x, y in pts]], SW, SH)
    s0.tags.append("reviewed")
    s0.save()
    s1.tags.append("reviewed")
    s1.save()
    again = prepare(name, CLASSES, masks=True, confidence=0.3, duplicate_iou=0.7)
    assert again["filled"] == 0 and again["done"] == 2  # a reviewed sample is never refilled
    got = _exported_masks(export_reviewed(name, tmp_path / "out", CLASSES))
    by_label = dict(got["seg0.png"])
    assert np.array_equal(by_label["triangle"], want) and _iou(by_label["triangle"], truth[0][1][0]) < 0.95
    assert _iou(by_label["circle"], truth[0][0][0]) > 0.97
    assert _iou(dict(got["seg1.png"])["square"], truth[1][0][0]) > 0.97


def test_the_app_backend_fills_boxes_from_the_confident_prelabels_and_leaves_a_persons_work(project, tmp_path):
    from cvops.annotate.app import prepare

    fo = connect()
    import cv2
    import numpy as np

    ds = fo.Dataset(f"{project}-review", persistent=True)
    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    for i, tags in enumerate([[], [], ["reviewed"]]):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.zeros((SH, SW, 3), np.uint8))
        s = fo.Sample(filepath=str(path), tags=tags)
        s["prelabels"] = fo.Detections(detections=[
            fo.Detection(label="circle", bounding_box=[0.1, 0.1, 0.3, 0.3], confidence=0.8),
            fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.3, 0.3], confidence=0.5),  # same object
            fo.Detection(label="triangle", bounding_box=[0.6, 0.6, 0.2, 0.2], confidence=0.1)])  # not confident
        if i == 1:  # a person's labels already
            s["ground_truth"] = fo.Detections(detections=[fo.Detection(label="square", bounding_box=[0, 0, .5, .5])])
        ds.add_sample(s)
    res = prepare(ds.name, CLASSES, masks=False, confidence=0.3, duplicate_iou=0.7)
    assert (res["field"], res["filled"], res["kept"], res["done"]) == ("ground_truth", 1, 1, 1)
    ds.reload()
    assert ds.label_schemas["ground_truth"]["classes"] == CLASSES
    assert ds.active_label_schemas[0] == "ground_truth"
    s0, s1, s2 = (ds.match({"filepath": str(tmp_path / f"{i}.png")}).first() for i in range(3))
    assert [(d.label, d.confidence) for d in s0.ground_truth.detections] == [("circle", 0.8)]
    assert s0.filled_from == "prelabels"
    assert [d.label for d in s1.ground_truth.detections] == ["square"] and s2.ground_truth is None


# ------------------------------------------------------------ the App's Annotate panel in a real browser
def _drag_and_tag(url: str, sample_id: str, size: tuple, box: List[float], dx: float, profile: Path) -> None:
    """In headless Chromium: open the sample, drag the box ``dx`` of the image width to the right in the
    Annotate panel, and tag the sample 'reviewed' with the App's tag button."""
    import time

    from playwright.sync_api import sync_playwright

    from test_app import CHROMIUM, FLAGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=[f for f in FLAGS if f != "--headless"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(f"{url}?id={sample_id}", wait_until="load")
            page.get_by_text("Annotate", exact=True).click(timeout=60_000)
            canvas = page.locator('[data-cy="lighter-sample-renderer-canvas"]')  # the annotation renderer
            canvas.wait_for(timeout=30_000)
            time.sleep(2)  # the labels are drawn after the image
            r = canvas.bounding_box()
            scale = min(r["width"] / size[0], r["height"] / size[1])  # the image is fitted, centred
            ox, oy = r["x"] + (r["width"] - size[0] * scale) / 2, r["y"] + (r["height"] - size[1] * scale) / 2
            cx, cy = ox + (box[0] + box[2] / 2) * size[0] * scale, oy + (box[1] + box[3] / 2) * size[1] * scale
            page.mouse.move(cx, cy)
            page.mouse.down()
            for k in range(1, 11):
                page.mouse.move(cx + dx * size[0] * scale * k / 10, cy, steps=2)
            page.mouse.up()
            time.sleep(2)
            page.get_by_text("Explore", exact=True).click()
            page.locator('[data-cy="action-tag-sample-labels"]').last.click()
            page.locator('[data-cy="tagger-switch-sample"]').click()
            tag = page.locator('[data-cy="sample-tag-input"]')
            tag.fill("reviewed")
            tag.press("Enter")
            page.locator('[data-cy="button-Apply"]').click()
            time.sleep(2)
        finally:
            browser.close()


@pytest.mark.slow
def test_a_box_edited_in_the_apps_annotate_panel_is_what_review_exports(cvops, project, tmp_path):
    import re
    import time

    import cv2
    import numpy as np

    from test_app import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("needs Chromium (apt-get install chromium); .ci/run installs it")
    from cvops.annotate.review import review_dataset
    from cvops.detector.runtime import Detections
    from cvops.drift.profile import Seen
    from cvops.monitor.stage import to_review
    from cvops.store import FolderStore

    base = ("recipe=quickstart", f"project={project}", "data.classes=[circle,square,triangle]")
    name = review_dataset(project, FolderStore(cvops.store).id)
    W_, H_ = 400, 300
    img = np.full((H_, W_, 3), 200, np.uint8)
    cv2.circle(img, (120, 150), 50, (30, 30, 200), -1)
    path = tmp_path / "edge.jpg"
    cv2.imwrite(str(path), img)
    d = Detections(np.array([[70, 100, 170, 200]], np.float32), np.array([0.8], np.float32), np.array([0]))
    to_review(name, [(Seen("edge.jpg", {"width": W_, "height": H_, "max_score": 0.8}, d, str(path)),
                      ["near_threshold"])], CLASSES, tmp_path, "fp", "test")
    r = cvops("annotate", *base, timeout=300)
    assert r.returncode == 0 and "1 sample(s) filled from the prelabels" in r.stdout, r.stdout + r.stderr
    fo = connect()
    ds = fo.load_dataset(name)
    sample = ds.first()
    before = list(sample.ground_truth.detections[0].bounding_box)

    from helpers.net import free_port

    port = free_port()
    app = cvops.popen("app", *base, "--review", "--port", str(port), env={"FIFTYONE_DO_NOT_TRACK": "true"})
    try:
        t0, line = time.time(), ""
        while time.time() - t0 < 120 and "FiftyOne App:" not in line:
            line = app.stdout.readline()
            assert line or app.poll() is None, "cvops app exited early"
        url = re.search(r"FiftyOne App: (\S+)", line).group(1).replace("localhost", "127.0.0.1").split("?")[0]
        _drag_and_tag(url, sample.id, (W_, H_), before, 0.25, tmp_path / "chromium")
    finally:
        app.terminate()
        app.wait(timeout=30)
    sample.reload()
    after = sample.ground_truth.detections[0].bounding_box
    assert "reviewed" in sample.tags, sample.tags
    assert after[0] == pytest.approx(before[0] + 0.25, abs=0.02) and after[1:] == pytest.approx(before[1:], abs=0.01)
    r = cvops("review", *base, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ann = next(Path(w) for w in r.stdout.split() if w.endswith("annotations.json"))
    [a] = json.loads(ann.read_text())["annotations"]
    assert a["bbox"] == pytest.approx([after[0] * W_, after[1] * H_, after[2] * W_, after[3] * H_], abs=0.01)
    assert a["bbox"][0] == pytest.approx(70 + 100, abs=8)  # 25 % of 400 px to the right of the model's box


def test_hostile_label_studio_results_are_reasons_never_a_crash():
    """What a broken client, an old export or an attacker could put in an annotation's result: each bad region
    is a reason (the sample is then quarantined by load), the good ones are read, nothing raises."""
    from cvops.annotate.labelstudio import boxes_from_results
    from cvops.annotate.labels import problems

    rect = {"type": "rectanglelabels", "value": {"x": 10, "y": 10, "width": 20, "height": 30, "rotation": 0,
                                                "rectanglelabels": ["circle"]}}
    hostile = [
        "not a region", 5, None, {"type": "rectanglelabels", "value": "x"},
        {"type": "rectanglelabels", "value": {"x": "nan", "y": 0, "width": 1, "height": 1,
                                              "rectanglelabels": ["circle"]}},
        {"type": "rectanglelabels", "value": {"x": 1, "rectanglelabels": ["circle"]}},  # no size
        {"type": "rectanglelabels", "value": {"x": 0, "y": 0, "width": 5, "height": 5,
                                              "rectanglelabels": ["circle", "square"]}},  # two labels
        {"type": "polygonlabels", "value": {"points": [[0, 0], ["a", 1]], "polygonlabels": ["square"]}},
        {"type": "polygonlabels", "value": {"points": "zz", "polygonlabels": ["square"]}},
        {"type": "textarea", "value": {"text": ["a comment"]}},  # another control: not ours, not an error
        rect,
    ]
    boxes, bad = boxes_from_results(hostile, 200, 100)
    assert [(b.label, [round(v, 3) for v in b.xywh]) for b in boxes] == [("circle", [20.0, 10.0, 40.0, 30.0])]
    assert len(bad) == 9, bad
    assert boxes_from_results({"x": 1}, 200, 100) == ([], ["the annotation's result is dict, not a list of regions"])
    # a rotated rectangle: the axis-aligned box around it
    turned = {"type": "rectanglelabels", "value": {"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90,
                                                  "rectanglelabels": ["square"]}}
    [b], _ = boxes_from_results([turned], 200, 100)
    assert [round(v, 3) for v in b.xywh] == [80.0, 10.0, 20.0, 20.0]  # 20x20 px turned about (100, 10)
    # a box far outside the image is a problem for the sample, not a crash
    far = {"type": "rectanglelabels", "value": {"x": 300, "y": 10, "width": 10, "height": 10,
                                               "rectanglelabels": ["circle"]}}
    [b], _ = boxes_from_results([far], 200, 100)
    assert "lies outside the 200x100 image" in problems([b], 200, 100, CLASSES, 0.7)[0]
