"""Serving an instance segmentation model: masks as COCO RLE or polygons, the ``masks`` parameter, the log.

One untrained RTMDet-Ins-tiny (128x128, mask kernels spread: partial masks of
many shapes) exported once for the module; the app runs in Starlette's TestClient.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.apps import app_args  # noqa: E402
from helpers.images import encode, scene  # noqa: E402

from cvops import masks as rle  # noqa: E402
from cvops.detector.runtime import OnnxDetector  # noqa: E402
from cvops.requestlog import RequestLog, read_log  # noqa: E402
from cvops.serve.app import create_app  # noqa: E402

INFO = {"fingerprint": "fp-masks", "recipe": "tiny_seg"}
BOX_KEYS = {"box", "score", "label", "class"}



def bad_parameter_count(client: TestClient) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples
               if s.name == "cvops_errors_total" and s.labels.get("reason") == "bad_parameter")


@pytest.fixture(scope="module")
def mask_detector(tmp_path_factory: pytest.TempPathFactory) -> OnnxDetector:
    from helpers.tiny_model import make_onnx

    path = make_onnx(tmp_path_factory.mktemp("tiny-ins-128"), model="rtmdet_ins_tiny", score_thr=0.2, max_det=20)
    return OnnxDetector(path)


@pytest.fixture
def client(mask_detector: OnnxDetector, tmp_path: Path) -> Iterator[TestClient]:
    log = RequestLog(tmp_path / "log", sample_rate=0.0)
    with TestClient(create_app(mask_detector, **app_args(INFO, log=log))) as c:
        yield c


def predict(client: TestClient, img: np.ndarray, **params: Any) -> dict:
    r = client.post("/v1/predict", params=params, content=encode(img, ".png"), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


def test_rle_is_the_models_own_mask(client: TestClient, mask_detector: OnnxDetector) -> None:
    img = scene(96, 160, seed=1)  # not square, not the input size: masks are un-letterboxed
    expected = mask_detector.predict([img])[0]
    assert expected.masks is not None and len(expected.masks) > 0
    partial = [0 < m.sum() < m.size for m in expected.masks]
    assert sum(partial) >= 3, "the spread head must give partial masks, or equality proves little"
    assert client.get("/v1/model").json()["task"] == "instance_segmentation"
    for body in (predict(client, img), predict(client, img, masks="rle")):
        dets = body["detections"]
        assert [{k: v for k, v in d.items() if k != "mask"} for d in dets] == expected.to_json(mask_detector.classes)
        assert len(dets) == len(expected.masks)
        for d, m in zip(dets, expected.masks):
            assert set(d) == BOX_KEYS | {"mask", "mask_area"}
            assert d["mask"]["size"] == [96, 160] and isinstance(d["mask"]["counts"], str)
            np.testing.assert_array_equal(rle.decode(d["mask"]), m)
            assert d["mask_area"] == int(m.sum())


def test_polygons_rasterise_back_to_the_mask(client: TestClient, mask_detector: OnnxDetector) -> None:
    from pycocotools import mask as coco_mask

    img = scene(120, 100, seed=2)
    expected = mask_detector.predict([img])[0].masks
    dets = predict(client, img, masks="polygon")["detections"]
    checked = 0
    for d, m in zip(dets, expected):
        assert "mask" not in d and d["mask_area"] == int(m.sum())
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in d["polygon"])
        assert bool(d["polygon"]) == bool(m.any())
        if m.sum() < 100:  # a few pixels: the boundary is most of the mask
            continue
        drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(d["polygon"], 120, 100))).astype(bool)
        iou = (drawn & m).sum() / (drawn | m).sum()
        assert iou >= 0.99, (iou, int(m.sum()))  # pixel-edge outlines; contours through pixel centres: 0.96-0.98
        checked += 1
    assert checked >= 3


def test_masks_none_and_the_log_keep_areas_only(client: TestClient, mask_detector: OnnxDetector,
                                                tmp_path: Path) -> None:
    img = scene(64, 80, seed=3)
    expected = mask_detector.predict([img])[0].masks
    none = predict(client, img, masks="none")["detections"]
    assert [set(d) for d in none] == [BOX_KEYS | {"mask_area"}] * len(expected)
    predict(client, img)
    predict(client, img, masks="polygon")
    records, skipped = read_log(tmp_path / "log")
    assert skipped == 0 and len(records) == 3
    for rec in records:
        assert [set(d) for d in rec["detections"]] == [BOX_KEYS | {"mask_area"}] * len(expected)
        assert [d["mask_area"] for d in rec["detections"]] == [int(m.sum()) for m in expected]


BAD = ["bogus", "RLE", "", "polygons", "rle ", "x" * 20_000]


@pytest.mark.parametrize("query", [{"masks": v} for v in BAD] + [[("masks", "rle"), ("masks", "none")]],
                         ids=[v[:10] or "empty" for v in BAD] + ["repeated"])
def test_a_bad_masks_parameter_is_refused(client: TestClient, query: Any, tmp_path: Path) -> None:
    r = client.post("/v1/predict", params=query, content=encode(scene(64, 64), ".png"),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "'masks'" in error and "rle" in error and "polygon" in error and "none" in error
    assert len(error) < 300  # a huge value is not echoed back
    assert bad_parameter_count(client) == 1
    assert read_log(tmp_path / "log")[0][-1]["error"] == "bad_parameter"
    predict(client, scene(64, 64))  # still serving


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=300))
def test_any_masks_value_is_answered(client: TestClient, value: str) -> None:
    # an empty body: a valid value gets as far as the body (400 empty_body), any other is refused first
    r = client.post("/v1/predict", params={"masks": value}, content=b"", headers={"Content-Type": "image/png"})
    assert r.status_code == 400
    assert ("'masks'" in r.json()["error"]) == (value not in ("rle", "polygon", "none"))


def test_a_box_only_model_answers_as_before(detector: OnnxDetector) -> None:
    img = scene(96, 160, seed=1)
    expected = detector.predict([img])[0].to_json(detector.classes)
    assert "mask_logits" not in detector.outputs and "masks" not in detector.outputs
    with TestClient(create_app(detector, **app_args(INFO))) as c:
        assert c.get("/v1/model").json()["task"] == "detection"
        for params in ({}, {"masks": "rle"}, {"masks": "polygon"}, {"masks": "none"}):
            assert predict(c, img, **params)["detections"] == expected
        assert c.post("/v1/predict", params={"masks": "bogus"}, content=encode(img, ".png"),
                      headers={"Content-Type": "image/png"}).status_code == 400


def test_polygons_follow_pixel_edges() -> None:
    """Rasterised by pycocotools, the polygons are exactly the mask with its holes filled, on any pixel pattern."""
    from pycocotools import mask as coco_mask
    from scipy import ndimage

    def drawn(polys: list, h: int, w: int) -> np.ndarray:
        if not polys:
            return np.zeros((h, w), bool)
        return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polys, h, w))).astype(bool).reshape(h, w)

    assert rle.to_polygons(np.zeros((5, 6), bool)) == []
    pixel = np.zeros((5, 6), bool)
    pixel[2, 3] = True
    assert rle.to_polygons(pixel) == [[3, 2, 3, 3, 4, 3, 4, 2]]
    comb = np.zeros((6, 9), bool)
    comb[1:5, 1:8:2] = True  # teeth one pixel apart: the gaps stay open
    comb[4, 1:8] = True
    np.testing.assert_array_equal(drawn(rle.to_polygons(comb), 6, 9), comb)
    rng = np.random.default_rng(0)
    for i in range(200):  # blobs, staircases, pixels touching at a corner, the image border
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        blob = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        if i % 2:
            blob = cv2.morphologyEx(blob.view(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)).view(bool)
        polys = rle.to_polygons(blob)
        assert all(isinstance(v, int) for p in polys for v in p)
        np.testing.assert_array_equal(drawn(polys, h, w), ndimage.binary_fill_holes(blob), err_msg=str(i))


def test_a_tensorrt_engine_says_whether_it_predicts_masks() -> None:
    from types import SimpleNamespace

    from cvops.serve.slots import _outputs

    engine = SimpleNamespace(engine=SimpleNamespace(outputs=["num_dets", "boxes", "scores", "labels", "mask_logits"]))
    assert "mask_logits" in _outputs(engine)  # EngineDetector: the outputs of its TrtDetector
    assert _outputs(SimpleNamespace()) == []  # a detector that says nothing is box-only


def test_mask_work_is_held_in_the_decode_budget(mask_detector: OnnxDetector) -> None:
    """A mask model's answer works on masks as large as the image (polygons most): that memory is part of the
    decode budget. A 1000x1000 grayscale PNG decodes within 10 MB, and its RLE answer too (3 + 4 bytes a
    pixel); its polygons (3 + 9) do not fit, so that request is refused (413) instead of overrunning it."""
    gray = cv2.cvtColor(scene(1000, 1000, seed=4), cv2.COLOR_BGR2GRAY)
    body = encode(gray, ".png")
    with TestClient(create_app(mask_detector, **app_args(INFO, decode_memory_mb=10.0))) as c:
        ok = c.post("/v1/predict", params={"masks": "rle"}, content=body, headers={"Content-Type": "image/png"})
        assert ok.status_code == 200, ok.text
        big = c.post("/v1/predict", params={"masks": "polygon"}, content=body, headers={"Content-Type": "image/png"})
        assert big.status_code == 413 and "decode budget" in big.json()["error"], big.text
