"""Instance masks through curate: every format in, checked, and out (COCO export, FiftyOne).

The RLE codec is checked against pycocotools (the format's reference), each
quarantine reason is produced by a file that has it, and hostile segmentations
(huge coordinates, runs that overrun the image, junk strings) are rows, never a
crash or a huge allocation.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvops import masks
from cvops.curate.sources.items import Box, Item
from cvops.curate.sources.ledger import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_curate import _conserved, curate  # noqa: E402,F401  (curate: the fixture running the stage)


def _fortran(m):
    return np.asfortranarray(m.astype(np.uint8))


# ------------------------------------------------------------------ codec
def test_rle_codec_equals_pycocotools():
    from pycocotools import mask as coco

    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 9), (7, 1), (3000, 4000)] + [tuple(rng.integers(1, 80, 2)) for _ in range(200)]
    for k, (h, w) in enumerate(shapes):
        if k % 3 == 0:  # blocks (long runs: multi-group numbers, negative differences)
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h):, rng.integers(0, w):] = True
        else:
            m = rng.random((h, w)) < rng.random()
        ref = coco.encode(_fortran(m))
        mine = masks.encode(m)
        assert mine["counts"] == ref["counts"].decode() and mine["size"] == [h, w]
        assert (masks.decode(mine) == m).all()
        assert masks.area(mine) == int(coco.area(ref))
        assert (masks.decode({"size": [h, w], "counts": ref["counts"].decode()}) == coco.decode(ref)).all()


def test_polygons_rasterise_as_pycocotools_and_clip_to_the_image():
    from pycocotools import mask as coco

    poly = [[2.5, 3.0, 30.2, 4.0, 25.0, 20.5, 4.0, 18.0]]
    rle, clipped = masks.from_segmentation(poly, 40, 30)
    ref = coco.decode(coco.merge(coco.frPyObjects(poly, 30, 40)))
    assert not clipped and (masks.decode(rle) == ref.astype(bool)).all()
    # partly outside: clipped to the image, the inside part kept exactly
    rle, clipped = masks.from_segmentation([[-20, -20, 20, -20, 20, 10, -20, 10]], 40, 30)
    assert clipped and masks.area(rle) == 20 * 10 and masks.bbox(rle) == [0.0, 0.0, 20.0, 10.0]
    # a coordinate of 1e12 is clipped before rasterising (no buffer sized by it)
    rle, clipped = masks.from_segmentation([[1e12, 1e12, -1e12, 5, 3, -1e12]], 40, 30)
    assert clipped and 0 < masks.area(rle) <= 40 * 30


@pytest.mark.parametrize("seg,reason", [
    ([[1, 2, 3, 4]], "mask polygon with fewer than 3 points"),
    ([[1, 2, 3, 4, 5]], "mask polygon with fewer than 3 points"),
    ([[1, 2, float("nan"), 4, 5, 6]], "mask polygon has a non-finite coordinate"),
    ([[1, 2, float("inf"), 4, 5, 6]], "mask polygon has a non-finite coordinate"),
    ([[100, 100, 200, 100, 200, 200]], "mask outside the image"),
    ([[5, 5, 5, 5, 5, 5]], "empty mask"),
    ([[0, 0] * 200_001], "mask polygon has too many points"),
    ([["1", 2, 3, 4, 5, 6]], "segmentation is not polygons or RLE"),
    ([[True, 2, 3, 4, 5, 6]], "segmentation is not polygons or RLE"),
    ("abc", "segmentation is not polygons or RLE"),
    (42, "segmentation is not polygons or RLE"),
    ({"counts": "0"}, "segmentation is not polygons or RLE"),
    ({"size": [30, 40], "counts": {"a": 1}}, "segmentation is not polygons or RLE"),
    ({"size": [20, 20], "counts": [400]}, "RLE size differs from the image"),
    ({"size": [30, 40], "counts": [10, 10]}, "RLE counts do not add up to the image size"),
    ({"size": [30, 40], "counts": [1200, 5]}, "RLE counts do not add up to the image size"),
    ({"size": [30, 40], "counts": [-5, 1205]}, "RLE counts do not add up to the image size"),
    ({"size": [30, 40], "counts": [1200]}, "empty mask"),
    ({"size": [30, 40], "counts": "0"}, "RLE counts do not add up to the image size"),
    ({"size": [30, 40], "counts": "\x7f\x7f"}, "RLE counts do not parse"),
    ({"size": [30, 40], "counts": "o"}, "RLE counts do not parse"),  # ends inside a run
    ({"size": [30, 40], "counts": "oooooooooooooooo1"}, "RLE counts do not parse"),  # a run beyond any image
    ({"size": [30, 40], "counts": "0" * 10_000_000}, "RLE counts do not add up"),  # refused before parsing
    ({"size": [30, 40], "counts": "a0" + "0" * 20}, "RLE counts do not parse"),  # empty runs after the first
    ({"size": [30, 40], "counts": "T1" * 500}, "RLE counts do not add up"),  # stops at the first overrun
])
def test_unusable_segmentations_name_their_reason(seg, reason):
    with pytest.raises(masks.MaskError) as e:
        masks.from_segmentation(seg, 40, 30)
    assert e.value.reason.startswith(reason)


def test_random_junk_is_a_mask_error_or_a_mask_never_anything_else():
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(32, 127)] + ["\x00", "\xff", "é"]
    for _ in range(3000):
        pick = rng.random()
        if pick < 0.4:
            seg = {"size": [30, 40], "counts": "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))}
        elif pick < 0.7:
            seg = {"size": [30, 40], "counts": [rng.randint(-3, 1300) for _ in range(rng.randint(0, 6))]}
        else:
            seg = [[rng.uniform(-1e6, 1e6) if rng.random() < 0.3 else rng.uniform(-5, 45)
                    for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(0, 3))]
        try:
            rle, _ = masks.from_segmentation(seg, 40, 30)
        except masks.MaskError:
            continue
        m = masks.decode(rle)
        assert m.shape == (30, 40) and m.any()


# ------------------------------------------------------------------- EXIF
@pytest.mark.parametrize("orientation", range(1, 9))
def test_masks_drawn_on_stored_pixels_follow_the_exif_rotation(tmp_path, orientation):
    """The stored pixels are white exactly where the polygon is: after curate rotates the image for
    display, the instance's mask must cover exactly the white pixels again."""
    from cvops.curate.validate import check_masks, open_image

    w, h = 64, 40
    poly = [[6, 4, 40, 8, 30, 30, 10, 26]]
    stored, _ = masks.from_segmentation(poly, w, h)
    pixels = (masks.decode(stored) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "img.jpg"
    Image.fromarray(np.stack([pixels] * 3, -1)).save(path, exif=exif.tobytes(), quality=100)
    item = Item(path, str(path), "coco", [Box("a", 6, 4, 34, 26, "t#1", segmentation=poly)], declared_size=(w, h))
    ledger = Ledger()
    _, rgb, _, boxes = open_image(item, tmp_path, ledger)
    kept, clipped = check_masks(item, boxes, rgb.shape[1], rgb.shape[0], ledger)
    assert not ledger.rows and len(kept) == 1 and not clipped
    shown = rgb[..., 0] > 127
    got = masks.decode(kept[0].mask)
    assert got.shape == shown.shape and (got != shown).mean() < 0.01  # JPEG edges only
    x0, y0, bw, bh = masks.bbox(kept[0].mask)
    b = kept[0]
    assert abs(b.x - x0) <= 1 and abs(b.y - y0) <= 1 and abs(b.w - bw) <= 2 and abs(b.h - bh) <= 2


# ------------------------------------------------------------ through curate
def _coco_with_masks(root: Path):
    """A COCO file whose instances carry every mask form and every defect; returns what must come out."""
    root.mkdir(parents=True)
    w, h = 48, 32
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):  # two different images (not near duplicates)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    block = np.zeros((h, w), bool)
    block[4:12, 6:20] = True
    good = {
        "polygon": ([[6, 20, 30, 20, 30, 30, 6, 30]], [6, 20, 24, 10]),
        "rle_string": (masks.encode(block), [6, 4, 14, 8]),
        "rle_list": ({"size": [h, w], "counts": [32 * 30, 5, 27, 5, h * w - 32 * 30 - 10 - 27]}, [30, 0, 2, 5]),
        "clipped": ([[40, 2, 60, 2, 60, 10, 40, 10]], [40, 2, 8, 8]),
    }
    bad = {
        "no mask": (None, "instance without a mask (curate.masks=true)"),
        "two points": ([[1, 1, 5, 5]], "mask polygon with fewer than 3 points"),
        "nan": ([[1, 1, float("nan"), 5, 9, 1]], "mask polygon has a non-finite coordinate (NaN or infinity)"),
        "size": ({"size": [10, 10], "counts": [100]}, "RLE size differs from the image"),
        "overrun": ({"size": [h, w], "counts": [10, h * w]}, "RLE counts do not add up to the image size"),
        "empty": ({"size": [h, w], "counts": [h * w]}, "empty mask"),
        "outside": ([[100, 100, 120, 100, 120, 120]], "mask outside the image"),
    }
    anns = []
    for k, (seg, box) in enumerate(good.values()):
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "segmentation": seg, "iscrowd": 0})
    for k, (seg, _) in enumerate(bad.values()):
        a = {"id": 100 + k, "image_id": 2, "category_id": 1, "bbox": [2, 2, 10 + k, 10], "iscrowd": 0}
        if seg is not None:
            a["segmentation"] = seg
        anns.append(a)
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h},
                       {"id": 2, "file_name": "b.png", "width": w, "height": h}],
            "annotations": anns, "categories": [{"id": 1, "name": "blob"}]}
    (root / "annotations.json").write_text(json.dumps(coco, allow_nan=True))
    return good, {r for _, r in bad.values()}, (w, h)


def test_coco_masks_in_every_form_checked_exported_and_in_fiftyone(curate, tmp_path):
    import fiftyone as fo
    from pycocotools import mask as coco

    good, reasons, (w, h) = _coco_with_masks(tmp_path / "coco")
    ann = tmp_path / "coco" / "annotations.json"
    m = curate("data=coco", f"data.path={ann}", "curate.masks=true", "curate.split.ratios={train:1.0}")
    mt = m["metrics"]
    _conserved(m)
    assert mt["masks_kept"] == len(good) == mt["boxes_kept"] and mt["masks_clipped"] == 1
    assert {r["reason"] for r in m["rows"]} == reasons
    assert all(r["boxes"] == "1" for r in m["rows"])
    # the COCO export round-trips every kept mask (clipped to the image); area is the mask's
    export = json.loads((m["dir"] / "export" / "train.json").read_text())
    src = {tuple(a["bbox"]): a["segmentation"] for a in json.loads(ann.read_text())["annotations"] if a["image_id"] == 1}
    assert len(export["annotations"]) == len(good)
    for a in export["annotations"]:
        seg = src[tuple(a["bbox"])]
        if isinstance(seg, dict) and isinstance(seg["counts"], str):  # compressed: pycocotools reads bytes
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        else:
            rle = coco.frPyObjects(seg, h, w) if isinstance(seg, dict) else coco.merge(coco.frPyObjects(
                [[min(max(v, 0), w if i % 2 == 0 else h) for i, v in enumerate(p)] for p in seg], h, w))
        want = coco.decode(rle).astype(bool)
        got = coco.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        assert (got.astype(bool) == want).all() and a["area"] == int(want.sum())
    # FiftyOne: instance masks on ground_truth, cropped to each box as the App expects
    ds = fo.load_dataset(mt["dataset_name"])
    dets = [d for s in ds for d in s.ground_truth.detections]
    assert len(dets) == len(good) and all(d.mask is not None for d in dets)
    for d in dets:  # whole-pixel boxes around box and mask; the mask inside, every pixel of it
        x, y, bw, bh = (v * s for v, s in zip(d.bounding_box, (w, h, w, h)))
        assert all(abs(v - round(v)) < 1e-9 for v in (x, y, bw, bh))
        x, y, bw, bh = (int(round(v)) for v in (x, y, bw, bh))
        a = next(a for a in export["annotations"]
                 if all(abs(p - q) <= 1 for p, q in zip(a["bbox"], (x, y, bw, bh))))
        full = masks.decode(a["segmentation"])
        assert d.mask.shape == (bh, bw) and (d.mask.astype(bool) == full[y:y + bh, x:x + bw]).all()
        assert d.mask.sum() == full.sum()


def test_masks_off_keeps_todays_boxes_and_ignores_bad_segmentations(curate, tmp_path):
    _coco_with_masks(tmp_path / "coco")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "curate.split.ratios={train:1.0}")
    assert m["metrics"]["boxes_kept"] == m["metrics"]["boxes_in"] and "masks_kept" not in m["metrics"]
    export = json.loads((m["dir"] / "export" / "train.json").read_text())
    assert not any("segmentation" in a for a in export["annotations"])


def test_yolo_segment_lines_become_masks(curate, tmp_path):
    from pycocotools import mask as coco

    root = tmp_path / "y"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    w, h = 40, 20
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.1 0.1 0.5 0.1 0.5 0.9 0.1 0.9\n"  # a segment: x, y relative to the image
        "0 0.7 0.5 0.2 0.4\n"                  # a box without a mask: quarantined when masks are required
        "0 0.1 0.1 0.5 0.1\n")                 # 2 points: a 4-value line reads as a box, also without a mask
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [blob]\n")
    m = curate("data=yolo", f"data.path={root / 'data.yaml'}", "curate.masks=true", "curate.split.ratios={train:1.0}")
    _conserved(m)
    assert m["metrics"]["masks_kept"] == 1
    assert [r["reason"] for r in m["rows"]] == ["instance without a mask (curate.masks=true)"] * 2
    a = json.loads((m["dir"] / "export" / "train.json").read_text())["annotations"][0]
    want = coco.decode(coco.merge(coco.frPyObjects([[4, 2, 20, 2, 20, 18, 4, 18]], h, w))).astype(bool)
    got = masks.decode(a["segmentation"])
    assert (got == want).all()


def test_generated_data_with_masks_curates_every_mask(curate):
    m = curate("data=synthetic", "data.synthetic.num_images=12", "data.synthetic.videos=1",
               "data.synthetic.video_frames=4", "data.synthetic.masks=true", "curate.masks=true")
    mt = m["metrics"]
    _conserved(m)
    assert mt["boxes_quarantined"] == 0 and mt["masks_kept"] == mt["boxes_kept"] > 0


# ------------------------------------------------------- train and evaluate
def test_quickstart_seg_runs_every_stage_with_masks(cvops):
    """The instance-segmentation recipe, shrunk: masks curated, an RTMDet-Ins trained, its predicted masks
    scored by COCOeval "segm" and by FiftyOne on the same masks, exported with its masks (FP32 and INT8 gated on
    mask mAP too) and monitored (mask area and fill among the drift features)."""
    import fiftyone as fo

    small = ["recipe=quickstart_seg", "project=segtest", "data.synthetic.num_images=24", "data.synthetic.videos=0",
             "model.image_size=[128,128]", "train.max_epochs=2", "train.val_interval=1", "tracker=none",
             "evaluate.score_thr=0.001",  # an untrained model scores low: keep its predictions to score them
             "export.calib_images=8", "monitor.window=16"]
    r = cvops(*small, "stages=[curate,train,evaluate]", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = cvops.run_jsons()[-1]["stages"]
    assert run["curate"]["metrics"]["masks_kept"] == run["curate"]["metrics"]["boxes_kept"] > 0
    assert run["train"]["metrics"]["masks"] is True
    ev = run["evaluate"]["metrics"]
    assert {"segm_mAP", "segm_mAP50", "segm_per_class_AP", "fiftyone_segm_mAP"} <= set(ev)
    assert ev["segm_contract_abs_diff"] <= 1e-3
    preds = json.loads((Path(run["evaluate"]["artifacts"]["dir"]) / "predictions_test.json").read_text())
    export = json.loads(Path(run["curate"]["artifacts"]["dir"], "export", "test.json").read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in export["images"]}  # masks at the image's size
    assert preds and all(masks.decode(p["segmentation"]).shape == size[p["image_id"]] for p in preds)
    ds = fo.load_dataset(run["curate"]["metrics"]["dataset_name"])
    field = ev["predictions_field"]
    assert ds.count(f"{field}.detections.mask") == ds.count(f"{field}.detections") > 0
    assert ds.count("ground_truth.detections.mask") == run["curate"]["metrics"]["boxes_kept"]

    r = cvops(*small, timeout=600)  # the recipe's every stage; curate/train/evaluate cached
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = cvops.run_jsons()[-1]["stages"]
    ex = run["export"]["metrics"]
    assert ex["masks"] is True and ex["gate"] == "pass"
    assert {"torch_segm_map", "onnx_segm_map", "segm_map_drop", "int8_segm_map_drop"} <= set(ex)
    assert ex["segm_map_drop"] is not None and ex["int8_segm_map_drop"] is not None
    latency = Path(run["export"]["artifacts"]["dir"], "latency.md").read_text()
    assert "mask mAP" in latency.splitlines()[0]
    import onnx

    graph = onnx.load(str(Path(run["export"]["artifacts"]["dir"], "model.onnx")), load_external_data=False).graph
    assert graph.output[-1].name == "mask_logits"
    # per-instance IoU of the instances scored >= evaluate.confusion_score_thr (none, for so short a training)
    assert "mask_iou" in ex and (ex["mask_iou"] is None or ex["mask_iou"]["p5"] >= 0.95), ex["mask_iou"]
    assert ("Per-instance mask IoU" in latency) == (ex["mask_iou"] is not None)
    assert run["monitor"]["status"] == "ran"
    fo.delete_dataset(ds.name)


# ------------------------------------------------------- masks of a model's output, in image pixels
def test_instance_masks_rle_from_regions_equals_the_full_mask_encoding():
    """InstanceMasks keeps each mask as its own region; its RLE (over the whole image) must be the same as
    encoding the full mask - including masks touching every border, full columns, and empty masks."""
    rng = np.random.default_rng(0)
    cases = [rng.random((3, h, w)) < p for h, w, p in [(1, 1, 0.5), (7, 5, 0.5), (12, 9, 0.9), (6, 13, 0.1)]]
    full = np.ones((2, 10, 10), bool)
    full[1, :, 4] = False  # columns of ones from the first row to the last, either side of an empty one
    cases += [full, np.zeros((2, 4, 6), bool)]
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        cases.append(rng.random((1, h, w)) < rng.random())
    for arr in cases:
        inst = masks.InstanceMasks.from_array(arr)
        assert inst.shape == arr.shape and np.array_equal(inst.to_array(), arr)
        assert inst.areas().tolist() == arr.sum(axis=(1, 2)).tolist()
        for i in range(len(arr)):
            assert inst.rle(i) == masks.encode(arr[i])
            assert np.array_equal(masks.decode(inst.rle(i)), arr[i])


def test_model_masks_reach_image_pixels_through_their_regions_only():
    """The letterboxed masks back to image pixels: the same as resizing the whole mask bilinearly and
    thresholding at 0.5 (cv2.resize; a pixel may differ where both sit on the threshold), and a small
    object on a 40 MP image costs its own region, not 40 MB."""
    import cv2

    rng = np.random.default_rng(1)
    differing, total = 0, 0
    for _ in range(100):
        m = np.zeros((2, 64, 64), np.uint8)
        cv2.circle(m[0], tuple(int(v) for v in rng.integers(0, 64, 2)), int(rng.integers(1, 15)), 1, -1)
        m[1] = rng.random((64, 64)) < 0.05
        nw, nh = (int(v) for v in rng.integers(8, 65, 2))
        w, h = (int(v) for v in rng.integers(4, 400, 2))
        inst = masks.upscale_instances(m, (nw, nh), (w, h))
        for k in range(2):
            want = cv2.resize(m[k, :nh, :nw].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
            got = inst[k]
            total += 1
            if not np.array_equal(got, want):
                differing += 1
                assert (got & want).sum() / (got | want).sum() >= 0.95
    assert differing <= 0.03 * total, (differing, total)
    blob = np.zeros((1, 64, 64), np.uint8)
    blob[0, 30:34, 30:34] = 1
    big = masks.upscale_instances(blob, (64, 40), (8000, 5000))
    assert big.shape == (1, 5000, 8000) and 0 < big.region(0)[2].size <= 510 * 510  # the blob: 4 px x 125
    assert masks.area(big.rle(0)) == big.areas()[0] > 0


def test_rle_strings_equal_pycocotools_for_few_and_many_runs():
    """The compressed string is written one run at a time for a few runs and all at once (numpy) for many:
    both must be pycocotools' string."""
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(2)
    for h, w, p in [(5, 7, 0.3), (40, 60, 0.5), (300, 200, 0.02), (64, 64, 0.97)]:
        m = rng.random((h, w)) < p
        want = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert masks.encode(m)["counts"] == want
        assert masks.InstanceMasks.from_array(m[None]).rle(0)["counts"] == want


def test_masks_covering_a_large_upload_cost_one_at_a_time():
    """A hostile upload for a mask model: every instance covers the whole (large) image. The masks in image
    pixels are computed when read and kept only within InstanceMasks.cache_bytes, so reading every area and
    RLE holds about one full-size mask at a time (and the cache), not all of them (40 x 10 MB here)."""
    import tracemalloc

    src = np.ones((40, 64, 64), np.uint8)
    src[:, 10:20, 10:20] = 0  # a hole, so each RLE has a few runs
    inst = masks.upscale_instances(src, (64, 40), (4000, 2500))
    full = 4000 * 2500
    tracemalloc.start()
    try:
        areas = inst.areas()
        codes = [inst.rle(i) for i in range(len(inst))]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (areas > 0.9 * full).all() and all(masks.area(c) == a for c, a in zip(codes, areas))
    assert inst._cached_bytes <= masks.InstanceMasks.cache_bytes
    assert peak < 12 * full, f"peak {peak / 2**20:.0f} MiB for 40 masks of {full / 2**20:.0f} MiB each"


def test_mask_logits_reach_the_image_as_mmdet_takes_them():
    """cvops.masks.logits_to_instances == mmdet's RTMDet-Ins rescale (torch: x8 bilinear, bilinear to
    ceil(H1 / scale_x) x ceil(W1 / scale_y), crop, sigmoid > thr), pixel for pixel, for letterboxed images of
    any size and aspect ratio; the rows or columns mmdet's swapped scales leave short are outside every mask."""
    import math

    import torch
    import torch.nn.functional as F

    from cvops.masks import logits_to_instances

    rng = np.random.default_rng(0)
    for _ in range(25):
        lh, lw = int(rng.integers(4, 20)), int(rng.integers(4, 20))
        logits = rng.normal(0, 3, (3, lh, lw)).astype(np.float32)
        w, h = int(rng.integers(20, 900)), int(rng.integers(20, 900))
        s = min(lw * 8 / w, lh * 8 / h)
        nw, nh = max(1, min(int(w * s + 0.5), lw * 8)), max(1, min(int(h * s + 0.5), lh * 8))
        sx, sy = nw / w, nh / h
        thr = float(rng.choice([0.5, 0.3]))
        up = F.interpolate(torch.from_numpy(logits)[None], scale_factor=8, mode="bilinear")
        up = F.interpolate(up, size=[math.ceil(up.shape[-2] / sx), math.ceil(up.shape[-1] / sy)], mode="bilinear",
                           align_corners=False)[..., :h, :w]
        ref = np.zeros((3, h, w), bool)
        ref[:, :up.shape[-2], :up.shape[-1]] = (up.sigmoid() > thr)[0].numpy()
        got = logits_to_instances(logits, 8, (sx, sy), (w, h), thr)
        np.testing.assert_array_equal(got.to_array(), ref)
        assert 0 < ref.sum() < ref.size  # real shapes, not empty or full masks
