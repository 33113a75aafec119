"""Monitor of an instance segmentation model: mask features in the records and profiles (the same from a
window run through the model and from the request log), and edge cases with their masks in FiftyOne."""

from __future__ import annotations

import uuid

import cv2
import numpy as np
import pytest

from cvops import masks as rle
from cvops.detector.runtime import Detections
from cvops.drift.profile import Seen, profile_of, record_from_log, record_of

CLASSES = ["circle", "square", "triangle"]
W, H = 80, 60
MASK_KEYS = ("mask_area_frac", "mask_fill")
PRED_KEYS = ("num_boxes", "max_score", "mean_score", "empty", "box_area_frac", "labels", *MASK_KEYS)


def _mask_dets() -> Detections:
    """Four detections with hand-drawn masks: filled, a mask past its box, a box past the image, a weak one."""
    boxes = np.array([[10, 10, 30, 40], [40, 5, 60, 25], [70, 40, 90, 70], [5, 45, 15, 55]], np.float32)
    masks = np.zeros((4, H, W), bool)
    masks[0, 10:40, 10:30] = True  # fills its box: 600 px, fill 1
    masks[1, 5:25, 40:65] = True  # 5 columns past its box: 500 px over a 400 px box
    masks[2, 45:60, 72:80] = True  # box clipped to 10 x 20 = 200 px; 120 px mask
    masks[3, 48:52, 8:12] = True  # below low: not counted
    return Detections(boxes, np.array([0.9, 0.7, 0.6, 0.1], np.float32), np.array([0, 1, 2, 0], np.int64),
                      np.linspace(0, 1, 8, dtype=np.float32), masks)


def _image(value: int = 100) -> np.ndarray:
    img = np.full((H, W, 3), value, np.uint8)
    cv2.circle(img, (20, 25), 9, (30, 200, 60), -1)
    return img


def _logged(bgr: np.ndarray, dets: Detections, rid: str = "r1") -> dict:
    """What serve's request log keeps for a mask model (the contract): the record's image statistics and, per
    detection, box, score, label, class and the mask's pixel count (no mask)."""
    from cvops.drift.stats import image_stats

    d = [{"box": [float(v) for v in b], "score": float(s), "label": int(lab), "class": CLASSES[int(lab)],
          **({"mask_area": int(m.sum())} if dets.masks is not None else {})}
         for b, s, lab, m in zip(dets.boxes, dets.scores, dets.labels,
                                 dets.masks if dets.masks is not None else [None] * len(dets.boxes))]
    return {"id": rid, "status": 200, "width": bgr.shape[1], "height": bgr.shape[0], **image_stats(bgr),
            "detections": d, "embedding": [float(v) for v in dets.embedding]}


def test_mask_features_from_the_model_and_from_the_log_are_the_same():
    bgr, dets = _image(), _mask_dets()
    ran = record_of(bgr, dets, CLASSES, low=0.3)
    assert ran["mask_area_frac"] == pytest.approx([600 / (W * H), 500 / (W * H), 120 / (W * H)])
    assert ran["mask_fill"] == pytest.approx([1.0, 500 / 400, 120 / 200])
    logged, _ = record_from_log(_logged(bgr, dets), low=0.3)
    for k in PRED_KEYS:
        assert logged[k] == pytest.approx(ran[k]) if k != "labels" else logged[k] == ran[k], k
    _same_profile([(_image(v), dets) for v in (100, 140, 60)])


def test_an_image_without_detections_profiles_the_same_from_the_log():
    # the log cannot tell that an image without detections came from a mask model; its mask lists are empty
    # in the model's record, so the pooled profiles agree all the same
    dets = _mask_dets()
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                       dets.embedding, np.zeros((0, H, W), bool))
    ran = record_of(_image(), empty, CLASSES, 0.3)
    assert ran["mask_fill"] == [] and ran["num_boxes"] == 0
    _same_profile([(_image(v), d) for v, d in ((100, dets), (140, empty), (60, dets))])


def _same_profile(images) -> None:
    from_model = profile_of([Seen("x", record_of(b, d, CLASSES, 0.3)) for b, d in images])
    from_log = profile_of([Seen("x", record_from_log(_logged(b, d), 0.3)[0]) for b, d in images])
    assert set(from_model.features) == set(from_log.features) and set(MASK_KEYS) <= set(from_log.features)
    for k, v in from_model.features.items():
        np.testing.assert_allclose(from_log.features[k], v, err_msg=k)
    assert from_model.classes == from_log.classes
    assert len(from_log.features["mask_fill"]) == 3 * sum(len(d.boxes) > 0 for _, d in images)


def test_box_only_records_have_no_mask_features():
    bgr, dets = _image(), _mask_dets()
    boxes_only = Detections(dets.boxes, dets.scores, dets.labels, dets.embedding)
    ran = record_of(bgr, boxes_only, CLASSES, low=0.3)
    logged, _ = record_from_log(_logged(bgr, boxes_only), low=0.3)
    assert not set(MASK_KEYS) & (set(ran) | set(logged))
    assert not set(MASK_KEYS) & set(profile_of([Seen("x", ran), Seen("y", logged)]).features)
    # a malformed mask_area in the log: that record has no mask statistics, the window still reads
    bad = _logged(bgr, dets)
    bad["detections"][1]["mask_area"] = "many"
    assert "mask_fill" not in record_from_log(bad, low=0.3)[0]


def _paste(det, w: int, h: int) -> np.ndarray:
    """A FiftyOne detection's mask back on the whole image (its box is whole pixels: fiftyone_mask)."""
    x, y, bw, bh = det.bounding_box
    x0, y0 = int(round(x * w)), int(round(y * h))
    full = np.zeros((h, w), bool)
    m = np.asarray(det.mask, bool)
    assert m.shape == (int(round(bh * h)), int(round(bw * w)))
    full[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    return full


@pytest.fixture
def review_name():
    from cvops.fo import connect

    name = f"monitor-masks-{uuid.uuid4().hex[:8]}"
    yield name
    fo = connect()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_edge_cases_with_masks_reach_the_review_dataset_and_its_export(review_name, tmp_path):
    from cvops.fo import connect
    from cvops.annotate.review import export_reviewed
    from cvops.monitor.stage import to_review

    dets = _mask_dets()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), _image(80 + 20 * i))
    rec = record_of(_image(), dets, CLASSES, 0.3)
    # as run_images leaves a folder window: masks as RLE, dets.masks dropped
    compact = Detections(dets.boxes, dets.scores, dets.labels, dets.embedding)
    folder = Seen("0.png", rec, compact, str(paths[0]), masks=[rle.encode(m) for m in dets.masks])
    arrays = Seen("1.png", rec, dets, str(paths[1]))  # masks still as arrays on the detections
    logged, log_dets = record_from_log(_logged(_image(), dets), 0.3)
    from_log = Seen("r1", logged, log_dets, str(paths[2]))  # a sampled request: boxes only
    n = to_review(review_name, [(folder, ["near_threshold"]), (arrays, ["overlap"]), (from_log, ["far_embedding"])],
                  CLASSES, tmp_path, "fp", "test window")
    assert n == 3
    fo = connect()
    ds = fo.load_dataset(review_name)
    for tag in ("near_threshold", "overlap"):
        got = ds.match_tags(tag).first().prelabels.detections
        assert [d.label for d in got] == ["circle", "square", "triangle", "circle"]
        for det, want in zip(got, dets.masks):
            assert det.mask is not None
            np.testing.assert_array_equal(_paste(det, W, H), want)
    logged_dets = ds.match_tags("far_embedding").first().prelabels.detections
    assert len(logged_dets) == 4 and all(d.mask is None for d in logged_dets)
    assert logged_dets[0].bounding_box == pytest.approx([10 / W, 10 / H, 20 / W, 30 / H])

    # cvops review: the accepted prelabels export with their masks as COCO segmentations
    for s in ds:
        s.tags.append("reviewed")
        s.save()
    out = export_reviewed(review_name, tmp_path / "reviewed", CLASSES)
    # accepted prelabels are the confident ones: the weak detection (0.1) of each image stays out
    assert out["images"] == 3 and out["boxes"] == 9 and out["masks"] == 6
    import json

    coco = json.loads(open(out["path"]).read())
    by_image = {im["id"]: im["file_name"] for im in coco["images"]}
    for a in coco["annotations"]:
        if by_image[a["image_id"]].endswith("2.png"):
            assert "segmentation" not in a
            continue
        seg, _ = rle.from_segmentation(a["segmentation"], W, H)  # what curate.masks=true accepts
        m = rle.decode(seg)
        assert a["area"] == int(m.sum())
        assert any(np.array_equal(m, want) for want in dets.masks)


@pytest.fixture(scope="module")
def mask_detector(tmp_path_factory):
    """An untrained RTMDet-Ins exported with its masks (128x128 input, at most 10 detections)."""
    from helpers.tiny_model import make_onnx

    from cvops.detector.runtime import OnnxDetector

    return OnnxDetector(make_onnx(tmp_path_factory.mktemp("tiny-ins-onnx"), max_det=10, model="rtmdet_ins_tiny"))


def test_a_window_run_through_a_mask_model_keeps_its_masks_and_matches_its_log(mask_detector):
    from cvops.drift.profile import run_images

    rng = np.random.default_rng(0)
    frames = [(f"f{i}", None, (rng.random((96 + 16 * i, 128, 3)) * 255).astype(np.uint8)) for i in range(2)]
    expected = mask_detector.predict([f[2] for f in frames])
    seen = run_images(mask_detector, iter(frames), low=0.0, batch=2)
    for s, want, (_, _, bgr) in zip(seen, expected, frames):
        assert s.dets.masks is None and len(s.masks) == len(want.boxes) > 0  # compact: RLE, no arrays
        for r, m in zip(s.masks, want.masks):
            np.testing.assert_array_equal(rle.decode(r), m)
        assert len(s.record["mask_area_frac"]) == len(want.boxes)  # low=0: every detection is kept
        assert s.record["mask_area_frac"] == pytest.approx(
            [rle.area(r) / (bgr.shape[0] * bgr.shape[1]) for r in s.masks])
        # what serve logs for this image (its detections with their mask_area) gives the same statistics
        log = {"width": bgr.shape[1], "height": bgr.shape[0], "detections": s.record["detections"]}
        assert [d["mask_area"] for d in log["detections"]] == [rle.area(r) for r in s.masks]
        logged, _ = record_from_log(log, low=0.0)
        assert logged["mask_area_frac"] == pytest.approx(s.record["mask_area_frac"], rel=1e-12)
        # the log rounds boxes to 0.01 px: an untrained model's boxes of a few pixels move their fill a little
        assert logged["mask_fill"] == pytest.approx(s.record["mask_fill"], rel=1e-2)


def test_the_drift_report_shows_the_mask_features(tmp_path):
    from cvops.drift.stats import Profile, compare
    from cvops.monitor.stage import _html, _plots

    rng = np.random.default_rng(0)
    ref = Profile({"box_area_frac": rng.beta(2, 20, 300), "mask_area_frac": rng.beta(2, 30, 300),
                   "mask_fill": rng.normal(0.78, 0.05, 300)})
    win = Profile({"box_area_frac": rng.beta(2, 20, 200), "mask_area_frac": rng.beta(2, 30, 200),
                   "mask_fill": rng.normal(0.55, 0.05, 200)})
    report = compare(ref, win)
    assert report.drift_features == ["mask_fill"]
    plots = _plots(tmp_path, ref, win, report)
    metrics = {"drift_detected": True, "degradation": {}, "window_images": 200, "window_source": "test",
               "reference_images": 300, "edge_cases": 0, "review_dataset": "x-review", "edge_case_reasons": {}}
    _html(tmp_path, "t", metrics, report, plots)
    page = (tmp_path / "report.html").read_text()
    assert '<tr style="background:#fdd"><td>mask_fill</td><td>ks</td>' in page
    assert "<tr><td>mask_area_frac</td><td>ks</td>" in page
