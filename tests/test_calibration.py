"""The label-free precision estimate: isotonic calibration of scores into "this box is right" (fit at export,
applied to served detections), checked against the true precision of windows with known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from cvops.detector.calibration import ALL, Calibration, fit, match, pav


def test_pav_is_the_monotone_least_squares_fit():
    x, y = pav(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0, 1, 0, 1, 1]))
    assert y == sorted(y) and y[0] == 0.0 and y[-1] == 1.0
    assert y == [0.0, 0.5, 1.0]  # (0.2, 0.3) pooled: 1 then 0 violates monotonicity
    assert x == pytest.approx([0.1, 0.25, 0.45])
    rng = np.random.default_rng(0)
    s = rng.random(5000)
    _, fitted = pav(s, rng.random(5000) < s)
    assert all(a <= b for a, b in zip(fitted, fitted[1:]))


def test_match_is_coco_style_by_score_one_box_per_object_same_class_crowd_ignored():
    truth = [{"category_id": 1, "bbox": [0, 0, 10, 10]}, {"category_id": 2, "bbox": [50, 50, 10, 10]},
             {"category_id": 1, "bbox": [100, 100, 10, 10], "iscrowd": 1}]
    dets = [{"category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},     # duplicate, lower score: FP
            {"category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},     # the match (IoU 0.82)
            {"category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8},   # right place, wrong class: FP
            {"category_id": 1, "bbox": [100, 100, 10, 10], "score": 0.7}]  # on a crowd box: not a TP
    assert match(dets, truth) == [False, True, False, False]
    assert match([], truth) == [] and match(dets[:1], []) == [False]


def _window(rng, n_images: int, shift: float = 0.0):
    """Detections whose chance of being right is their score**1.5 (minus ``shift`` on a shifted window): a COCO
    split (truth) and results, built so the true precision is known."""
    images, anns, dets = [], [], []
    for i in range(n_images):
        images.append({"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"})
        for k in range(4):
            cls = 1 + k % 2
            box = [k * 20.0, 10.0, 15.0, 15.0]
            score = float(rng.uniform(0.05, 1.0))
            right = rng.random() < np.clip(score ** 1.5 - shift, 0, 1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls, "bbox": box, "area": 225})
            dets.append({"image_id": i, "category_id": cls, "score": score,
                         "bbox": box if right else [box[0], 60.0, 15.0, 15.0]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, dets


def test_the_estimate_is_close_to_the_true_precision_of_a_window_it_never_saw():
    rng = np.random.default_rng(1)
    val, val_dets = _window(rng, 150)
    cal = Calibration(fit(val, val_dets, confidence=0.3))
    assert set(cal.curves) == {ALL, "a", "b"} and cal.reference[ALL] == pytest.approx(0.54, abs=0.06)
    for shift in (0.0, 0.25):  # in distribution, and a window whose scores mean less
        coco, dets = _window(rng, 100, shift)
        truth = {}
        for a in coco["annotations"]:
            truth.setdefault(a["image_id"], []).append(a)
        kept = [d for d in dets if d["score"] >= 0.3]
        hits = [h for i in {d["image_id"] for d in kept}
                for h in match([d for d in kept if d["image_id"] == i], truth[i])]
        true_precision = float(np.mean(hits))
        served = [{"class": "ab"[d["category_id"] - 1], "score": d["score"]} for d in dets]
        est = cal.estimate(served)[ALL]["precision"]
        if shift == 0.0:
            assert abs(est - true_precision) < 0.05, (est, true_precision)
        else:  # a shift in kind the scores do not show: the estimate stays where the validation split was
            assert est - true_precision > 0.1, (est, true_precision)
    assert cal.estimate([{"class": "a", "score": 0.1}]) == {}  # below the confidence threshold: not served


def test_a_class_with_few_boxes_uses_the_curve_of_all_classes():
    rng = np.random.default_rng(2)
    val, dets = _window(rng, 100)
    few = [d for d in dets if d["category_id"] == 1] + [d for d in dets if d["category_id"] == 2][:5]
    data = fit(val, few, confidence=0.3)
    cal = Calibration(data)
    assert "b" not in cal.curves and data["boxes"]["b"] == 5
    assert cal.probability("b", 0.9) == cal.probability(ALL, 0.9)
    assert cal.probability("never-seen", 0.9) == cal.probability(ALL, 0.9)
