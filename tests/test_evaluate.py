"""The metric contract: cvops' mAP == pycocotools' == FiftyOne's on the same predictions."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from cvops.synthetic import SyntheticSpec, generate
from cvops.detector.coco import coco_eval
from cvops.evaluate.stage import _to_fiftyone

TOLERANCE = 1e-3  # measured difference is far smaller; see README "One metric contract"
SEGM_TOLERANCE = 1e-3  # masks: FiftyOne pastes each mask into its box; the same pixels when boxes are whole pixels


def _ground_truth(tmp_path, spec):
    """Generated images and their COCO file (absolute file names) as a test split."""
    gen = generate(tmp_path / "d", spec, progress=False)
    coco = json.loads(open(gen["annotations"]).read())
    for im in coco["images"]:
        im["file_name"] = str(tmp_path / "d" / im["file_name"])
    ann_file = tmp_path / "test.json"
    ann_file.write_text(json.dumps(coco))
    return coco, ann_file


@pytest.fixture
def fixed_predictions(tmp_path):
    """GT from the generator; predictions = jittered GT, some misses, some false positives."""
    import fiftyone as fo

    coco, ann_file = _ground_truth(tmp_path, SyntheticSpec(num_images=30, videos=0, seed=5))
    rng = np.random.default_rng(0)
    dets = []
    for a in coco["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.08, 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.1 else 1 + (a["category_id"] % 3)  # some wrong labels
        dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
                     "score": float(rng.uniform(0.3, 1.0))})
    for im in coco["images"][::3]:  # false positives
        dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)), "bbox": [5, 5, 30, 30],
                     "score": float(rng.uniform(0.05, 0.6))})
    name = f"contract-{uuid.uuid4().hex[:6]}"
    ds = fo.Dataset(name)
    ds.add_samples([fo.Sample(filepath=im["file_name"], ground_truth=fo.Detections(detections=[
        fo.Detection(label=coco["categories"][a["category_id"] - 1]["name"],
                     bounding_box=[a["bbox"][0] / im["width"], a["bbox"][1] / im["height"],
                                   a["bbox"][2] / im["width"], a["bbox"][3] / im["height"]])
        for a in coco["annotations"] if a["image_id"] == im["id"]])) for im in coco["images"]])
    yield name, ann_file, dets, [c["name"] for c in coco["categories"]]
    fo.delete_dataset(name)


def test_cvops_map_equals_pycocotools_and_fiftyone(fixed_predictions):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    name, ann_file, dets, classes = fixed_predictions
    stats, _ = coco_eval(ann_file, dets)
    gt = COCO(str(ann_file))
    ref = COCOeval(gt, gt.loadRes(dets), "bbox")
    ref.evaluate(), ref.accumulate(), ref.summarize()
    assert stats["mAP"] == pytest.approx(ref.stats[0], abs=1e-12)
    assert stats["mAP50"] == pytest.approx(ref.stats[1], abs=1e-12)
    assert 0.2 < stats["mAP"] < 0.95  # a real, imperfect score
    fo_map, results, _ = _to_fiftyone(name, "pred_contract", "eval_contract", {"test": ann_file}, {"test": dets},
                                   classes)
    assert abs(fo_map - stats["mAP"]) <= TOLERANCE, (fo_map, stats["mAP"])
    per_class = stats["per_class_AP"]
    assert set(per_class) == set(classes) and abs(np.mean(list(per_class.values())) - stats["mAP"]) < 1e-9
    import fiftyone as fo

    ds = fo.load_dataset(name)
    assert ds.count("pred_contract.detections") == len(dets)
    assert ds.sum("eval_contract_tp") + ds.sum("eval_contract_fn") == ds.count("ground_truth.detections")


def test_evaluate_plots(fixed_predictions, tmp_path):
    from cvops.evaluate.stage import _plots

    name, ann_file, dets, classes = fixed_predictions
    stats, ev = coco_eval(ann_file, dets)
    _, results, _ = _to_fiftyone(name, "pred_p", "eval_p", {"test": ann_file}, {"test": dets}, classes)
    out = _plots(tmp_path, classes, ev, results, stats["per_class_AP"])
    assert set(out) == {"per_class_ap", "per_class_ap_csv", "pr_curves", "confusion_matrix"}
    table = (tmp_path / "per_class_ap.md").read_text()
    assert all(c in table for c in classes)
    from PIL import Image

    from cvops.evaluate.stage import _confusion

    everything = _confusion(results, classes, 0.0)
    confident = _confusion(results, classes, 0.9)
    n_gt = sum(1 for t in results.ytrue if t != results.missing)
    assert everything[:-1].sum() == confident[:-1].sum() == n_gt  # every ground truth counted once
    assert confident[-1].sum() < everything[-1].sum()  # low-score false positives drop out
    assert np.trace(confident) < np.trace(everything)  # low-score matches become misses
    for png in ("pr_curves.png", "confusion_matrix.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size[0] > 300


def test_empty_predictions_score_zero(fixed_predictions):
    name, ann_file, dets, classes = fixed_predictions
    stats, _ = coco_eval(ann_file, [])
    assert stats["mAP"] == 0.0 and stats["mAP50"] == 0.0


@pytest.fixture
def fixed_mask_predictions(tmp_path):
    """GT masks from the generator; predicted masks = GT masks eroded/dilated/shifted, some misses and
    false positives; the GT in FiftyOne as instance masks (as curate stores them)."""
    import cv2
    import fiftyone as fo

    from cvops import masks

    coco, ann_file = _ground_truth(tmp_path, SyntheticSpec(num_images=24, videos=0, seed=3, masks=True))
    rng = np.random.default_rng(1)
    kernel = np.ones((3, 3), np.uint8)
    dets = []
    for a in coco["annotations"]:
        if rng.random() < 0.15:
            continue
        m = masks.decode(a["segmentation"]).astype(np.uint8)
        pick = rng.random()
        m = cv2.erode(m, kernel) if pick < 0.3 else cv2.dilate(m, kernel) if pick < 0.6 else \
            np.roll(m, int(rng.integers(-3, 4)), axis=1)
        if not m.any():
            continue
        rle = masks.encode(m.astype(bool))
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": masks.bbox(rle),
                     "segmentation": rle, "score": float(rng.uniform(0.3, 1.0))})
    for im in coco["images"][::3]:
        m = np.zeros((im["height"], im["width"]), bool)
        m[5:35, 5:35] = True
        rle = masks.encode(m)
        dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)), "bbox": masks.bbox(rle),
                     "segmentation": rle, "score": float(rng.uniform(0.05, 0.6))})
    name = f"segm-contract-{uuid.uuid4().hex[:6]}"
    ds = fo.Dataset(name)
    samples = []
    for im in coco["images"]:
        samples.append(fo.Sample(filepath=im["file_name"], ground_truth=fo.Detections(detections=[
            fo.Detection(label=coco["categories"][a["category_id"] - 1]["name"],
                         **dict(zip(("bounding_box", "mask"), masks.fiftyone_mask(a["segmentation"], a["bbox"]))))
            for a in coco["annotations"] if a["image_id"] == im["id"]])))
    ds.add_samples(samples)
    yield name, ann_file, dets, [c["name"] for c in coco["categories"]]
    fo.delete_dataset(name)


def test_mask_map_equals_pycocotools_and_fiftyone(fixed_mask_predictions):
    """The same contract for instance masks: COCOeval "segm" on the predictions, and FiftyOne's
    ``use_masks=True`` evaluation of the same masks stored on the detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    name, ann_file, dets, classes = fixed_mask_predictions
    segm, _ = coco_eval(ann_file, [dict(d) for d in dets], "segm")
    boxes, _ = coco_eval(ann_file, [dict(d) for d in dets], "bbox")
    gt = COCO(str(ann_file))
    res = [dict(d, segmentation=dict(d["segmentation"], counts=d["segmentation"]["counts"].encode())) for d in dets]
    ref = COCOeval(gt, gt.loadRes(res), "segm")
    ref.evaluate(), ref.accumulate(), ref.summarize()
    assert segm["mAP"] == pytest.approx(ref.stats[0], abs=1e-12) and segm["mAP50"] == pytest.approx(ref.stats[1])
    assert 0.2 < segm["mAP"] < 0.95 and segm["mAP"] != pytest.approx(boxes["mAP"])  # masks scored, not boxes
    fo_box, _, fo_segm = _to_fiftyone(name, "pred_segm", "eval_segm", {"test": ann_file}, {"test": dets}, classes,
                                      segm=True)
    assert abs(fo_box - boxes["mAP"]) <= TOLERANCE
    print(f"segm mAP: cvops {segm['mAP']:.6f} FiftyOne {fo_segm:.6f} box mAP {boxes['mAP']:.6f}")
    assert abs(fo_segm - segm["mAP"]) <= SEGM_TOLERANCE, (fo_segm, segm["mAP"])


@pytest.mark.slow
def test_relative_data_path_curates_trains_evaluates_and_exports(cvops):
    """A recipe's data.path relative to the working directory (as the shipped recipe=bccd has it): every stage
    keys its images the way the FiftyOne samples hold them (evaluate failed with 'keys that do not match the
    filepath field'), and the dataset's samples carry the evaluation."""
    import sys

    import fiftyone as fo

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from helpers.make_data import yolo_layout

    yolo_layout(cvops.workdir / "datasets" / "cells", "roboflow")  # Roboflow's ../train/images, like BCCD
    r = cvops("project=relpath", "data=yolo", "data.path=datasets/cells/data.yaml", "curate.split.respect_source=true",
              "stages=[curate,train,evaluate,export]", "model.image_size=[64,64]", "train.max_epochs=1",
              "train.batch_size=2", "train.base_batch_size=2", "model.pretrained=false", "tracker=none",
              "export.int8=false", "export.latency_repeats=2", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = cvops.run_jsons()[-1]
    assert [run["stages"][s]["status"] for s in ("curate", "train", "evaluate", "export")] == ["ran"] * 4
    ev = run["stages"]["evaluate"]["metrics"]
    coco = json.loads(open(run["stages"]["curate"]["artifacts"]["coco_test"]).read())
    assert coco["images"] and all(im["file_name"].startswith("/") for im in coco["images"])
    ds = fo.load_dataset(run["stages"]["curate"]["metrics"]["dataset_name"])
    test = ds.match_tags("test")
    assert len(test) == len(coco["images"]) == 2
    assert ev["eval_key"] in ds.list_evaluations() and test.exists(ev["predictions_field"]).count() == 2
