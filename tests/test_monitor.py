"""Monitor: windows from a folder / request log, edge-case selection, arrival in FiftyOne."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvops.detector.runtime import Detections
from cvops.drift.profile import Seen, edge_reasons, nn_distances


def _seen(scores, labels, boxes, emb=None, name="x"):
    d = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                   np.asarray(labels, np.int64), None if emb is None else np.asarray(emb, np.float32))
    rec = {"max_score": float(max(scores, default=0.0)), "width": 100, "height": 100}
    if emb is not None:
        rec["embedding"] = list(emb)
    return Seen(name, rec, d)


def test_edge_case_reasons():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 8)).astype(np.float32)
    far = np.full(8, 8.0)
    cases = [
        _seen([0.9], [0], [[10, 10, 40, 40]], ref[0] + 0.01),  # confident, typical: not an edge case
        _seen([0.22], [1], [[10, 10, 40, 40]], ref[1]),  # nothing confident, something seen
        _seen([0.9, 0.32], [0, 1], [[10, 10, 40, 40], [60, 60, 90, 90]], ref[2]),  # a hesitant second object
        _seen([0.9, 0.33], [0, 0], [[10, 10, 40, 40], [11, 11, 41, 41]], ref[3]),  # weaker duplicate: fine
        _seen([0.9, 0.85], [0, 2], [[10, 10, 40, 40], [12, 12, 40, 40]], ref[4]),  # two classes, one object
        _seen([0.9], [0], [[10, 10, 40, 40]], far),  # unlike anything in the reference
    ]
    reasons = edge_reasons(cases, ref, low=0.3, near=0.1, overlap_iou=0.5, quantile=0.99)
    assert reasons[0] == [] and reasons[3] == []
    assert "low_confidence" in reasons[1] and "near_threshold" in reasons[1]
    assert reasons[2] == ["near_threshold"]
    assert reasons[4] == ["overlap"]
    assert reasons[5] == ["far_embedding"]


def _draw(rng, n, rates):
    return [[k for k, r in rates.items() if rng.random() < r] for _ in range(n)]


def test_edge_cases_are_calibrated_on_the_reference_quiet_in_distribution_loud_on_a_shift():
    """Reasons as common in the window as in the reference flag only the rarest images (about edge_rate of an
    in-distribution window); a reason the window shows more often than the reference flags every image with
    it; content unlike the training data comes first."""
    from cvops.drift.profile import select_edge_cases

    rng = np.random.default_rng(0)
    rates = {"low_confidence": 0.05, "near_threshold": 0.25, "overlap": 0.35, "far_embedding": 0.01}
    ref = _draw(rng, 130, rates)
    flagged = []
    for seed in range(20):  # in distribution: about edge_rate flagged, never the bulk of overlap/near cases
        win = _draw(np.random.default_rng(100 + seed), 120, rates)
        picked, info = select_edge_cases(win, ref, 0.05, rng.random(120), 50)
        flagged.append(len(picked) / 120)
        assert sum(bool(r) for r in win) > 40  # many images do have a reason...
    assert np.mean(flagged) <= 0.05 and max(flagged) <= 0.12, flagged  # ...few of them are worth a person

    shifted = _draw(rng, 120, {**rates, "low_confidence": 0.6})  # darker: the model is unsure far more often
    picked, info = select_edge_cases(shifted, ref, 0.05, rng.random(120), 50)
    assert info["active"] == ["low_confidence"] and len(picked) == 50
    assert sum("low_confidence" in shifted[i] for i in picked) >= 45  # the rest: rarer combinations, ranked first

    scores = rng.random(120)
    ood = [["far_embedding"] if i % 3 == 0 else r for i, r in enumerate(_draw(rng, 120, rates))]
    picked, info = select_edge_cases(ood, ref, 0.05, scores, 50)
    assert "far_embedding" in info["active"]
    far = [i for i, r in enumerate(ood) if "far_embedding" in r]
    assert set(picked[:len(far)]) == set(far)  # the unlike-anything images first


def test_far_image_is_a_statistic_outside_the_reference_range_each_reference_image_against_the_others():
    """Content the model's features cannot tell from its training data (a street for a shapes model) still has
    other image statistics: a frame of another size, or much darker, is outside the reference's range."""
    from cvops.drift.profile import Seen, far_images

    rng = np.random.default_rng(0)

    def img(b, w=320, h=240):
        return Seen("x", {"brightness": b, "contrast": 40.0, "sharpness": 100.0, "saturation": 50.0, "width": w,
                          "height": h, "aspect": w / h})

    ref = [img(float(b)) for b in rng.normal(120, 10, 100)]
    inside = far_images(ref, [img(float(b)) for b in rng.normal(120, 10, 200)])
    assert inside.mean() < 0.05  # in distribution: about 2 / 101 beyond the extremes (widened by 5 %)
    assert far_images(ref, [img(60.0), img(120.0, 768, 432), img(121.0)]).tolist() == [True, True, False]
    own = far_images(ref, ref, reference=True)  # the reference's own rate, leave one out
    assert own.sum() <= 4  # about as often as a new in-distribution image (0 to 2 of 100 here)


def test_nn_distances_leave_one_out():
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    d = nn_distances(ref, ref, leave_one_out=True)
    assert (d > 0).all()
    assert nn_distances(ref, ref).max() == pytest.approx(0.0, abs=1e-3)


def test_edge_cases_arrive_in_fiftyone_with_prelabels(tmp_path):
    import cv2

    from cvops.fo import connect
    from cvops.monitor.stage import to_review

    name = f"monitor-test-review-{tmp_path.name}"
    fo = connect()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    frame = np.full((100, 100, 3), 90, np.uint8)
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), frame)
    a = _seen([0.2], [1], [[10, 10, 40, 40]], name=str(path))
    a.path = str(path)
    b = _seen([0.9, 0.85], [0, 2], [[10, 10, 40, 40], [12, 12, 40, 40]], name="video.mp4#7")
    b.frame = frame  # a decoded frame: written next to the artifact
    c = _seen([0.25], [0], [[0, 0, 5, 5]], name="request-1")  # an unsampled request: not reviewable
    n = to_review(name, [(a, ["low_confidence"]), (b, ["overlap"]), (c, ["low_confidence"])],
                  ["circle", "square", "triangle"], tmp_path, "fp123", "test window")
    assert n == 2
    ds = fo.load_dataset(name)
    assert len(ds) == 2 and ds.persistent
    s = ds.match_tags("overlap").first()
    assert s.edge_reasons == ["overlap"] and s.monitor_fingerprint == "fp123" and "needs_review" in s.tags
    labels = sorted(d.label for d in s.prelabels.detections)
    assert labels == ["circle", "triangle"]
    box = s.prelabels.detections[0].bounding_box
    assert all(0 <= v <= 1 for v in box)
    assert (tmp_path / "edge_cases").is_dir()
    # the same images again: not duplicated
    to_review(name, [(a, ["low_confidence"])], ["circle", "square", "triangle"], tmp_path, "fp", "w")
    assert len(fo.load_dataset(name)) == 2


def test_window_from_a_request_log_cut_mid_line(tmp_path):
    from cvops.drift.profile import window_from_log

    recs = [{"id": f"r{i}", "status": 200, "width": 64, "height": 48, "brightness": 100.0 + i,
             "detections": [{"box": [1, 2, 30, 40], "score": 0.8, "label": 1, "class": "square"}],
             "embedding": [0.1 * i, 0.2]} for i in range(5)]
    recs.insert(2, {"id": "bad", "status": 400, "error": "bad_image"})
    text = "\n".join(json.dumps(r) for r in recs) + "\n" + json.dumps(recs[0])[:25]  # killed mid-write
    (tmp_path / "requests.jsonl").write_text(text)
    recs[1]["model"] = "another-export"  # same project, other model: not this model's traffic
    for r in recs:
        r.setdefault("model", "this-export")
    text = "\n".join(json.dumps(r) for r in recs) + "\n" + json.dumps(recs[0])[:25]
    (tmp_path / "requests.jsonl").write_text(text)
    everything, _ = window_from_log(tmp_path, window=100, low=0.3)
    assert len(everything) == 5
    seen, skipped = window_from_log(tmp_path, window=3, low=0.3, model="this-export")
    assert skipped == 1
    assert [s.name for s in seen] == ["r2", "r3", "r4"]  # newest 3 successful requests of this model
    r = seen[0].record
    assert r["num_boxes"] == 1 and r["max_score"] == pytest.approx(0.8) and r["labels"] == ["square"]
    assert seen[0].dets.embedding.tolist() == pytest.approx([0.2, 0.2])


def test_monitor_without_request_log_or_source_says_what_to_do(cvops, tmp_path):
    r = cvops("project=mon", "data=synthetic", "stages=[monitor]", f"paths.store={tmp_path / 'store'}")
    assert r.returncode == 2
    assert "'export' (fingerprint" in r.stderr and "stages=[curate,train,export,monitor]" in r.stderr


def test_new_traffic_changes_the_monitor_fingerprint(tmp_path):
    from cvops.config import compose_config
    from cvops.fingerprint import fingerprints

    cfg = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}", "monitor.source=null"])
    log_dir = tmp_path / "store" / "requests" / "quickstart"
    log_dir.mkdir(parents=True)
    (log_dir / "requests.jsonl").write_text('{"id": "a"}\n')
    before = fingerprints(cfg)["monitor"]["fingerprint"]
    assert fingerprints(cfg)["monitor"]["fingerprint"] == before  # nothing new: cached verdict stands
    with open(log_dir / "requests.jsonl", "a") as f:
        f.write('{"id": "b"}\n')
    assert fingerprints(cfg)["monitor"]["fingerprint"] != before
    synthetic = compose_config(["recipe=quickstart", f"paths.store={tmp_path / 'store'}"])
    assert fingerprints(synthetic)["monitor"]["external"] == ""  # generated windows depend on the config only


def test_a_folder_window_sees_every_image_type_curate_reads(tmp_path):
    """`.jfif`, `.jpe` and `.mpo` images are curated; a monitor folder window sees them too (one list of image
    types, cvops.media.IMAGE_EXTS), and they enter the monitor's fingerprint."""
    import os
    from types import SimpleNamespace

    import cv2

    from cvops.curate.sources.images import read_images
    from cvops.media import IMAGE_EXTS
    from cvops.monitor.source import signature
    from cvops.monitor.stage import load_window

    folder = tmp_path / "window"
    folder.mkdir()
    names = ["a.jpg", "b.jfif", "c.jpe", "d.JFIF", "e.mpo", "f.png", "notes.txt"]
    for i, name in enumerate(names):
        bgr = np.full((24, 32, 3), 40 * i, np.uint8)
        ext = ".png" if name.endswith(".png") else ".jpg"  # .jfif/.jpe/.mpo hold JPEG bytes
        (folder / name).write_bytes(cv2.imencode(ext, bgr)[1].tobytes())
        os.utime(folder / name, (1_000_000 + i, 1_000_000 + i))  # the window is ordered by modification time
    images = names[:-1]

    class Blind:  # a model that finds nothing: the window's records are what is under test
        classes = ["thing"]

        def predict(self, frames):
            return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                    for _ in frames]

    ctx = SimpleNamespace(config=SimpleNamespace(monitor=SimpleNamespace(source=str(folder), window=100, fps=2.0)))
    seen, desc, _ = load_window(ctx, Blind(), low=0.3)
    assert desc == f"folder {folder}"
    assert [os.path.basename(s.name) for s in seen] == images  # oldest first, every image type, no text file
    assert all((s.record["width"], s.record["height"]) == (32, 24) for s in seen)
    curated = read_images(folder, "images")  # curate reads the very same files
    assert sorted(os.path.basename(str(it.path)) for it in curated) == sorted(images)
    assert {".jfif", ".jpe", ".mpo"} <= IMAGE_EXTS

    view = SimpleNamespace(monitor=SimpleNamespace(source=str(folder)), serve=SimpleNamespace(log_dir=None),
                           project="p")
    before = signature(view, tmp_path / "store")
    (folder / "g.jfif").write_bytes((folder / "b.jfif").read_bytes())
    assert signature(view, tmp_path / "store") != before  # a new .jfif is new traffic: a new monitor run
