"""Drift statistics and tests (cvops.drift.stats): power, false alarms, edge cases."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from cvops.drift.stats import (DriftReport, Profile, chi2, compare, image_stats, ks, mmd_test,
                                 prediction_stats, psi)

CLASSES = np.array(["car", "person", "bike", "truck"])
CLASS_P = np.array([0.5, 0.3, 0.15, 0.05])


def synthetic_profile(rng: np.random.Generator, n: int, brightness_scale: float = 1.0,
                      emb_shift: float = 0.0) -> Profile:
    """n images' worth of records: appearance and prediction stats, labels and 16-d embeddings."""
    brightness = rng.normal(120.0, 20.0, n) * brightness_scale
    contrast = rng.gamma(9.0, 5.0, n)
    sharpness = rng.lognormal(5.0, 0.5, n)
    saturation = rng.beta(2.0, 5.0, n) * 255.0
    num_boxes = rng.poisson(2.0, n)
    records = []
    for i in range(n):
        k = int(num_boxes[i])
        scores = rng.uniform(0.3, 1.0, k)
        records.append({
            "brightness": brightness[i], "contrast": contrast[i], "sharpness": sharpness[i],
            "saturation": saturation[i], "width": 640, "height": 480, "aspect": 640 / 480,
            "num_boxes": k, "max_score": float(scores.max()) if k else 0.0, "empty": float(k == 0),
            "box_area_frac": rng.beta(2.0, 20.0, k).tolist(),
            "labels": rng.choice(CLASSES, size=k, p=CLASS_P).tolist(),
            "source": "cam-1",
        })
    embeddings = rng.normal(size=(n, 16)) + emb_shift
    return Profile.from_records(records, embeddings=embeddings)


@pytest.fixture(scope="module")
def reference() -> Profile:
    return synthetic_profile(np.random.default_rng(1234), 400)


# ---------------------------------------------------------------------------
# KS / PSI
# ---------------------------------------------------------------------------


def test_ks_and_psi_detect_a_one_std_mean_shift():
    rng = np.random.default_rng(0)
    for _ in range(10):
        ref, cur = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
        stat, p = ks(ref, cur)
        assert p < 1e-6 and stat > 0.25
        assert psi(ref, cur) > 0.5


def test_ks_and_psi_are_quiet_on_the_same_distribution():
    rng = np.random.default_rng(1)
    ps, psis = [], []
    for _ in range(50):
        ref, cur = rng.normal(0, 1, 200), rng.normal(0, 1, 200)
        ps.append(ks(ref, cur)[1])
        psis.append(psi(ref, cur))
    ps, psis = np.array(ps), np.array(psis)
    assert not np.any((ps < 0.01) & (psis > 0.2))  # the drift rule compare() applies never fires
    assert ps.min() > 0.001 and np.mean(ps < 0.05) <= 0.12
    # PSI under no drift is about (bins - 1) * (1/n + 1/m) = 0.09, and rarely above 0.2 at n=200
    assert 0.05 < psis.mean() < 0.13
    assert np.mean(psis > 0.2) <= 0.06


def test_psi_bins_discrete_and_constant_references_by_value():
    rng = np.random.default_rng(2)
    flags = rng.integers(0, 2, 500).astype(float)
    assert psi(flags, rng.integers(0, 2, 500)) < 0.02
    assert psi(flags, (rng.random(500) < 0.9).astype(float)) > 0.5  # 50% -> 90% ones
    # a constant reference and a window at a new value: quantile bins alone would see no change
    assert psi(np.full(200, 640.0), np.full(200, 640.0)) == pytest.approx(0.0)
    assert psi(np.full(200, 640.0), np.full(200, 1280.0)) > 5.0


def test_ks_and_psi_drop_non_finite_values_and_reject_empty_samples():
    ref = np.array([1.0, 2.0, 3.0, np.nan, np.inf] * 20)
    assert psi(ref, ref) == pytest.approx(0.0)
    assert ks(ref, ref)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        psi([np.nan, np.nan], [1.0])
    with pytest.raises(ValueError):
        ks([], [1.0, 2.0])


# ---------------------------------------------------------------------------
# chi2
# ---------------------------------------------------------------------------


def test_chi2_detects_a_class_mix_change():
    ref = {"car": 600, "person": 300, "bike": 100}
    stat, p = chi2(ref, {"car": 60, "person": 60, "bike": 80})
    assert p < 1e-10 and stat > 50
    _, p_same = chi2(ref, {"car": 118, "person": 62, "bike": 20})
    assert p_same > 0.1


def test_chi2_tolerates_classes_missing_on_either_side():
    ref = {"car": 500, "person": 300, "bike": 3}
    _, p = chi2(ref, {"car": 100, "person": 60})  # a rare class absent from the window
    assert p > 0.1
    _, p = chi2({"car": 500, "person": 300}, {"car": 100, "person": 60, "truck": 1})  # one stray new class
    assert p > 0.1
    _, p = chi2({"car": 500, "person": 300}, {"car": 100, "person": 60, "truck": 40})  # a new class, often
    assert p < 0.01
    _, p = chi2({"car": 500, "person": 300}, {"car": 0, "person": 160})  # a common class gone
    assert p < 1e-10
    assert chi2({"car": 5}, {"car": 3}) == (0.0, 1.0)
    assert chi2({}, {"car": 3}) == (0.0, 1.0)
    with pytest.raises(ValueError):
        chi2({"car": -1, "bike": 2}, {"car": 1})


def test_chi2_is_calibrated_when_the_reference_is_a_sample_too():
    # Reference and window the same size: a plain goodness-of-fit test would fire ~4x too often.
    rng = np.random.default_rng(3)
    names = ["a", "b", "c", "d"]
    ps = []
    for _ in range(300):
        r = rng.multinomial(400, [0.4, 0.3, 0.2, 0.1])
        c = rng.multinomial(400, [0.4, 0.3, 0.2, 0.1])
        ps.append(chi2(dict(zip(names, r)), dict(zip(names, c)))[1])
    assert np.mean(np.array(ps) < 0.05) < 0.09


# ---------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------


def test_mmd_separates_shifted_gaussians_and_not_identical_ones():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 16))
    mmd2, p = mmd_test(X, rng.normal(size=(200, 16)) + 0.3)
    assert p <= 1 / 201 + 1e-12 and mmd2 > 0
    same = [mmd_test(X, rng.normal(size=(200, 16)), seed=s)[1] for s in range(10)]
    assert np.median(same) > 0.2
    assert sum(p < 0.05 for p in same) <= 2


def test_mmd_p_value_resolution_and_degenerate_inputs():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 3
    assert mmd_test(X, Y, permutations=99)[1] == pytest.approx(0.01)
    assert mmd_test(X, Y, permutations=999)[1] == pytest.approx(0.001)
    assert mmd_test(np.ones((10, 3)), np.ones((10, 3))) == (0.0, 1.0)
    assert mmd_test(X[:1], Y) == (0.0, 1.0)
    with pytest.raises(ValueError):
        mmd_test(X, Y[:, :3])


def test_mmd_subsamples_and_is_fast_on_500_by_500():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(2000, 64)), rng.normal(size=(800, 64))
    mmd_test(X[:100], Y[:100], permutations=10)  # warm up BLAS threads
    t = time.perf_counter()
    mmd2, p = mmd_test(X, Y, permutations=200, seed=0, max_n=500)
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, f"mmd_test took {elapsed:.2f}s"
    assert abs(mmd2) < 0.01 and p > 0.01
    assert mmd_test(X, Y, seed=0) == (mmd2, p)  # seeded: reproducible


# ---------------------------------------------------------------------------
# Profile and compare
# ---------------------------------------------------------------------------


def test_profile_from_records_columns_and_classes():
    prof = Profile.from_records([
        {"brightness": 100.0, "empty": True, "box_area_frac": [0.1, 0.2], "labels": ["car", "car"], "uri": "a.jpg"},
        {"brightness": 50, "box_area_frac": [0.3], "labels": ["bike"]},
        {"empty": False, "labels": []},
    ], embeddings=np.zeros((3, 2)))
    assert prof.n == 3
    assert set(prof.features) == {"brightness", "empty", "box_area_frac"}
    np.testing.assert_array_equal(prof.features["brightness"], [100.0, 50.0, np.nan])
    np.testing.assert_array_equal(prof.features["empty"], [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(prof.features["box_area_frac"], [0.1, 0.2, 0.3])  # pooled per object
    assert prof.classes == {"car": 2, "bike": 1}
    with pytest.raises(ValueError):
        Profile.from_records([{"a": 1.0}], embeddings=np.zeros((2, 4)))


def test_profile_npz_round_trip(tmp_path, reference):
    path = tmp_path / "sub" / "reference.profile"  # no .npz suffix: written at exactly this path
    reference.to_npz(path)
    assert path.is_file()
    back = Profile.from_npz(path)
    assert back.n == reference.n == 400
    assert back.classes == reference.classes
    assert list(back.features) == list(reference.features)
    for name, col in reference.features.items():
        np.testing.assert_array_equal(back.features[name], col)
    np.testing.assert_array_equal(back.embeddings, reference.embeddings)
    bare = Profile(features={"x": [1.0, 2.0]})
    bare.to_npz(tmp_path / "bare.npz")
    again = Profile.from_npz(tmp_path / "bare.npz")
    assert again.embeddings is None and again.classes == {} and again.n == 2


def test_compare_false_alarm_rate_on_identical_distributions(reference):
    rng = np.random.default_rng(7)
    alarms = []
    for w in range(40):
        report = compare(reference, synthetic_profile(rng, 200), seed=w)
        alarms.append(report.drift_detected)
    assert np.mean(alarms) <= 0.10, f"{sum(alarms)} false alarms in 40 windows"
    # constant columns are skipped, the rest tested; the Bonferroni factor counts only tests run
    by_name = {f.name: f for f in report.features}
    assert {by_name[k].test for k in ("width", "height", "aspect")} == {"skipped"}
    assert by_name["brightness"].test == "ks" and by_name["classes"].test == "chi2"
    assert by_name["embeddings"].test == "mmd"
    assert report.num_tests == sum(f.test != "skipped" for f in report.features) == 10
    for f in report.features:
        if f.test != "skipped":
            assert f.p_adjusted == pytest.approx(min(1.0, f.p_value * report.num_tests))


def test_compare_detects_darker_images_and_moved_embeddings(reference):
    rng = np.random.default_rng(8)
    bright_hits = emb_hits = 0
    for w in range(20):
        report = compare(reference, synthetic_profile(rng, 200, brightness_scale=0.7, emb_shift=0.3), seed=w)
        bright_hits += "brightness" in report.drift_features
        emb_hits += "embeddings" in report.drift_features
        assert report.drift_detected
        assert set(report.drift_features) <= {"brightness", "embeddings"}
    assert bright_hits >= 19 and emb_hits >= 19
    res = next(f for f in report.features if f.name == "brightness")
    assert res.cur_mean < res.ref_mean * 0.8
    assert res.psi > 0.2 and res.p_adjusted < 0.01


def test_compare_needs_both_significance_and_effect_size():
    # A tiny shift in huge samples: KS is "significant", PSI says it does not matter.
    rng = np.random.default_rng(9)
    ref = Profile(features={"x": rng.normal(0, 1, 20000)})
    cur = Profile(features={"x": rng.normal(0.1, 1, 20000)})
    report = compare(ref, cur)
    (res,) = report.features
    assert res.p_adjusted < 1e-6 and res.psi < 0.2
    assert not report.drift_detected


def test_compare_detects_a_class_mix_change_and_serialises():
    rng = np.random.default_rng(10)
    ref = Profile.from_records([{"labels": rng.choice(CLASSES, 3, p=CLASS_P).tolist()} for _ in range(300)])
    shifted_p = np.array([0.2, 0.3, 0.15, 0.35])
    cur = Profile.from_records([{"labels": rng.choice(CLASSES, 3, p=shifted_p).tolist()} for _ in range(100)])
    report = compare(ref, cur)
    assert isinstance(report, DriftReport)
    assert report.drift_features == ["classes"] and report.num_tests == 1
    d = json.loads(json.dumps(report.to_dict()))
    assert d["drift_detected"] is True and d["features"][0]["test"] == "chi2"
    assert d["n_reference"] == 300 and d["n_window"] == 100


def test_compare_reports_a_constant_feature_that_moved():
    ref = Profile(features={"width": np.full(100, 640.0), "height": np.full(100, 480.0)})
    cur = Profile(features={"width": np.full(50, 1280.0), "height": np.full(50, 480.0)})
    report = compare(ref, cur)
    assert report.drift_features == ["width"] and report.num_tests == 1


# ---------------------------------------------------------------------------
# image_stats / prediction_stats
# ---------------------------------------------------------------------------


def _textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((480, 640, 3), np.uint8)
    for _ in range(60):
        x, y = int(rng.integers(0, 600)), int(rng.integers(0, 440))
        color = tuple(int(v) for v in rng.integers(40, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 120)), y + int(rng.integers(10, 120))), color, -1)
    return img


def test_image_stats_brightness_sharpness_saturation_geometry():
    img = _textured()
    s = image_stats(img)
    assert set(s) == {"brightness", "contrast", "sharpness", "saturation", "width", "height", "aspect"}
    assert (s["width"], s["height"]) == (640.0, 480.0) and s["aspect"] == pytest.approx(4 / 3)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert s["brightness"] == pytest.approx(gray.mean(), abs=1e-6)
    assert s["contrast"] == pytest.approx(gray.std(), abs=1e-6)

    darker = image_stats((img * 0.6).astype(np.uint8))
    assert darker["brightness"] < 0.65 * s["brightness"]
    assert darker["contrast"] < s["contrast"]
    blurred = image_stats(cv2.GaussianBlur(img, (0, 0), 3))
    assert blurred["sharpness"] < 0.3 * s["sharpness"]
    assert blurred["brightness"] == pytest.approx(s["brightness"], rel=0.02)

    gray_s = image_stats(gray)
    assert gray_s["saturation"] == 0.0 and gray_s["brightness"] == pytest.approx(s["brightness"], abs=1e-6)
    assert image_stats(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))["saturation"] == 0.0
    assert image_stats(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)) == s
    # sharpness is measured at 256 px: a 2x upscale of the same content reads about the same
    big = image_stats(cv2.resize(img, (1280, 960), interpolation=cv2.INTER_NEAREST))
    assert big["sharpness"] == pytest.approx(s["sharpness"], rel=0.25)
    with pytest.raises(ValueError):
        image_stats(np.zeros((0, 5, 3), np.uint8))


def test_image_stats_saturation_and_sharpness_are_their_definitions():
    """The fast paths (a channel sum, an int16 Laplacian) give exactly the plain definitions."""
    for img in (_textured(2), _textured(3)[:7, :301], cv2.resize(_textured(4), (1911, 1077))):
        s = image_stats(img)
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        assert s["saturation"] == pytest.approx(hsv[:, :, 1].astype(np.float64).mean(), rel=1e-12)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        scale = 256 / max(h, w)
        if scale < 1:
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        lap = cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F)
        assert s["sharpness"] == pytest.approx(lap.var(), rel=1e-9)
    # the extreme 8-bit Laplacian (a lone white pixel on black, and its negative) fits the int16 path
    spike = np.zeros((9, 9), np.uint8)
    spike[4, 4] = 255
    for img in (spike, 255 - spike):
        lap = cv2.Laplacian(img.astype(np.float64), cv2.CV_64F)
        assert abs(lap).max() == 1020 and image_stats(img)["sharpness"] == pytest.approx(lap.var(), rel=1e-12)


def test_image_stats_is_fast_on_640x480():
    img = _textured(1)
    image_stats(img)
    best = float("inf")
    for _ in range(30):
        t = time.perf_counter()
        image_stats(img)
        best = min(best, time.perf_counter() - t)
    assert best < 0.003, f"image_stats took {best * 1e3:.2f} ms"


def test_prediction_stats():
    scores = np.array([0.9, 0.2, 0.6])
    labels = np.array(["car", "person", "bike"])
    boxes = np.array([[0, 0, 64, 48], [10, 10, 20, 20], [600, 400, 700, 500]], dtype=float)  # last one clipped
    s = prediction_stats(scores, labels, boxes, 640, 480, low=0.5)
    assert s["num_boxes"] == 2 and s["empty"] == 0.0
    assert s["max_score"] == pytest.approx(0.9) and s["mean_score"] == pytest.approx(0.75)
    assert s["box_area_frac"] == pytest.approx([0.01, 40 * 80 / (640 * 480)])
    assert s["labels"] == ["car", "bike"]

    low_only = prediction_stats(np.array([0.3]), np.array([1]), np.array([[0, 0, 5, 5]]), 640, 480, low=0.5)
    assert low_only["empty"] == 1.0 and low_only["num_boxes"] == 0
    assert low_only["max_score"] == pytest.approx(0.3) and low_only["mean_score"] == 0.0
    none = prediction_stats(np.zeros(0), np.zeros(0), np.zeros((0, 4)), 640, 480, low=0.5)
    assert none == {"num_boxes": 0, "max_score": 0.0, "mean_score": 0.0, "empty": 1.0,
                    "box_area_frac": [], "labels": []}
    with pytest.raises(ValueError):
        prediction_stats(scores, labels[:2], boxes, 640, 480, low=0.5)

    # records built from both functions make a profile
    prof = Profile.from_records([{**image_stats(_textured()), **s}, {**image_stats(_textured(1)), **none}])
    assert prof.n == 2 and prof.classes == {"car": 1, "bike": 1}
    assert len(prof.features["box_area_frac"]) == 2 and len(prof.features["brightness"]) == 2


def test_prediction_stats_mask_area_and_fill():
    # 100x50 image; masks counted by hand
    boxes = np.array([[10, 10, 30, 30],  # 400 px box, 200 px mask: fill 0.5
                      [90, 40, 120, 60],  # clipped to 10x10 = 100 px, 50 px mask inside: fill 0.5
                      [0, 0, 10, 10],  # a mask reaching past its box: fill 1.2
                      [100, 0, 120, 10],  # outside the image: no area, no fill (not a division by 0)
                      [5, 5, 15, 15]], dtype=float)  # under ``low``: not counted
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    areas = np.array([200, 50, 120, 0, 100])
    s = prediction_stats(scores, np.array(["a", "b", "a", "b", "a"]), boxes, 100, 50, low=0.5, mask_areas=areas)
    assert s["mask_area_frac"] == pytest.approx([200 / 5000, 50 / 5000, 120 / 5000, 0.0])
    assert s["mask_fill"] == pytest.approx([0.5, 0.5, 1.2])
    assert s["num_boxes"] == 4 and len(s["box_area_frac"]) == 4

    # the same output without masks (a box-only model): no mask statistics at all
    plain = prediction_stats(scores, np.array(["a", "b", "a", "b", "a"]), boxes, 100, 50, low=0.5)
    assert "mask_area_frac" not in plain and "mask_fill" not in plain
    assert plain == {k: v for k, v in s.items() if not k.startswith("mask_")}
    none = prediction_stats(np.zeros(0), np.zeros(0), np.zeros((0, 4)), 100, 50, low=0.5, mask_areas=np.zeros(0))
    assert none["mask_area_frac"] == [] and none["mask_fill"] == []
    with pytest.raises(ValueError, match="mask areas for"):
        prediction_stats(scores, np.zeros(5), boxes, 100, 50, low=0.5, mask_areas=areas[:3])
    with pytest.raises(ValueError, match="pixel counts"):
        prediction_stats(scores, np.zeros(5), boxes, 100, 50, low=0.5, mask_areas=[1, 2, -3, 4, 5])


def _mask_records(rng: np.random.Generator, n: int, erode: int = 0, size: int = 64) -> list:
    """Records of n images with 1-3 boxes, each holding an elliptical mask (eroded by ``erode`` pixels)."""
    recs = []
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(n):
        k = int(rng.integers(1, 4))
        wh = rng.uniform(12, 40, (k, 2))
        xy = rng.uniform(0, size - wh)
        boxes = np.hstack([xy, xy + wh])
        areas = []
        for x1, y1, x2, y2 in boxes:
            m = np.zeros((size, size), np.uint8)
            cv2.ellipse(m, (int(round((x1 + x2) / 2)), int(round((y1 + y2) / 2))),
                        (int((x2 - x1) / 2), int((y2 - y1) / 2)), 0, 0, 360, 1, -1)
            if erode:
                m = cv2.erode(m, kernel, iterations=erode)
            areas.append(int(m.sum()))
        scores = rng.uniform(0.5, 1.0, k)
        recs.append(prediction_stats(scores, np.array(["car"] * k), boxes, size, size, low=0.3, mask_areas=areas))
    return recs


def test_compare_flags_shrunken_masks_but_not_the_unchanged_boxes():
    # the same box distribution (independent draws); the window's masks are eroded by 3 pixels
    ref = Profile.from_records(_mask_records(np.random.default_rng(5), 300))
    same = Profile.from_records(_mask_records(np.random.default_rng(6), 150))
    shrunk = Profile.from_records(_mask_records(np.random.default_rng(6), 150, erode=3))
    assert {"mask_area_frac", "mask_fill"} <= set(ref.features)
    quiet = compare(ref, same)
    assert not quiet.drift_detected, quiet.drift_features
    rep = compare(ref, shrunk)
    assert "mask_fill" in rep.drift_features and "mask_area_frac" in rep.drift_features
    assert not {"box_area_frac", "num_boxes", "max_score", "mean_score"} & set(rep.drift_features)
    fill = next(f for f in rep.features if f.name == "mask_fill")
    assert fill.cur_mean < fill.ref_mean - 0.1  # filled ellipses are ~0.78 of their box, eroded ones far less
