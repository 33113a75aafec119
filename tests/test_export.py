"""Export: ONNX graph == PyTorch, dynamic batch, refusals, INT8 calibration set, Triton config, TensorRT availability."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.tiny_model import CLASSES, make_checkpoint

SIZE = (128, 128)


def _images(n: int, seed: int = 0):
    """Images of different sizes and aspect ratios with a few bright shapes (letterboxing is exercised)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(90, 200)), int(rng.integers(90, 200))
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 30)), y + int(rng.integers(8, 30))),
                          tuple(int(v) for v in rng.integers(120, 255, 3)), -1)
        out.append(img)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained RTMDet-tiny (spread head), its mmdet model with the export thresholds, and model.onnx."""
    from cvops.detector.mmdet import load_model
    from cvops.export.build import export_model
    from cvops.export.graph import Thresholds

    out = tmp_path_factory.mktemp("export")
    files = make_checkpoint(out, size=SIZE)
    thr = Thresholds(max_det=50, score_thr=0.2, iou_thr=0.6)
    cfg, model = load_model(files["config"], files["checkpoint"], test_cfg=vars(thr))
    contract = export_model(model, cfg, out / "model.onnx", SIZE, thr, CLASSES)
    return out, cfg, model, contract


def _torch_dets(model, pre, images, max_det=None):
    """mmdet's own predict() (its post-processing, mmcv NMS) on the same preprocessed tensors.

    mmdet's YOLOX head returns every NMS survivor; like the evaluate stage, keep the top ``max_det``.
    """
    from cvops.detector.runtime import Detections
    from cvops.export.stage import torch_runner

    tensor, scales = pre.batch(images)
    out = []
    for sample, scale, im in zip(torch_runner(model, pre)(tensor), scales, images):
        p = sample.pred_instances
        order = p.scores.argsort(descending=True)[:max_det]
        boxes = pre.unletterbox(p.bboxes[order].numpy(), scale, (im.shape[1], im.shape[0]))
        out.append(Detections(boxes, p.scores[order].numpy(), p.labels[order].numpy()))
    return out


def _assert_same(a, b, atol=1e-2):
    """Same detections (as sets, order by score): same labels, scores and boxes within tolerance."""
    assert len(a.scores) == len(b.scores), (len(a.scores), len(b.scores))
    for d in (a, b):
        r = np.round(d.boxes)
        key = np.lexsort((r[:, 3], r[:, 2], r[:, 1], r[:, 0], d.labels, -np.round(d.scores, 3)))
        d.boxes, d.scores, d.labels = d.boxes[key], d.scores[key], d.labels[key]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)


def test_onnx_equals_pytorch_at_batch_1_and_4(exported):
    from cvops.detector.runtime import OnnxDetector

    out, _, model, contract = exported
    det = OnnxDetector(out / "model.onnx")
    assert det.classes == list(CLASSES)
    assert contract["io"]["inputs"][0]["shape"] == ["batch", 3, SIZE[1], SIZE[0]]
    images = _images(4)
    ref = _torch_dets(model, det.preprocess, images)
    assert sum(len(r.scores) for r in ref) > 10  # the comparison has something to compare
    for batch in (1, 4):
        got = []
        for i in range(0, 4, batch):
            got += det.predict(images[i:i + batch])
        for g, r in zip(got, ref):
            _assert_same(g, r)
    # the graph's own outputs for batch 4: fixed shapes, zero rows past num_dets
    num, boxes, scores, labels, emb = det.run(det.preprocess.batch(images)[0])
    assert emb.shape[0] == 4 and emb.ndim == 2 and np.isfinite(emb).all()
    assert num.shape == (4, 1) and num.dtype == np.int32 and labels.dtype == np.int32
    assert boxes.shape == (4, 50, 4) and scores.shape == (4, 50)
    for i, n in enumerate(num[:, 0]):
        assert (scores[i, n:] == 0).all() and (scores[i, :n] >= 0.2).all()


def test_preprocessing_contract_travels_with_the_model(exported):
    import onnx

    out, cfg, _, contract = exported
    written = json.loads((out / "preprocess.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["cvops.preprocess"]) == written["preprocess"] == contract["preprocess"]
    pre = written["preprocess"]
    assert (pre["width"], pre["height"]) == SIZE
    assert pre["mean"] == list(cfg.model.data_preprocessor.mean) and pre["channel_order"] == "BGR"
    assert pre["pad_value"] == [114.0, 114.0, 114.0]  # RTMDet's Pad(pad_val=114)
    assert json.loads(meta["cvops.classes"]) == list(CLASSES)
    assert "masks" not in written  # a box model's contract has no mask rule
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_fixed_batch_export(exported, tmp_path):
    from cvops.export.build import export_model
    from cvops.export.graph import Thresholds
    from cvops.detector.runtime import OnnxDetector

    _, cfg, model, _ = exported
    contract = export_model(model, cfg, tmp_path / "model.onnx", SIZE, Thresholds(max_det=50, score_thr=0.2), CLASSES,
                            batch="1")
    assert contract["io"]["inputs"][0]["shape"] == [1, 3, SIZE[1], SIZE[0]]
    det = OnnxDetector(tmp_path / "model.onnx")
    assert len(det.predict(_images(3))) == 3  # runs image by image
    export_model(model, cfg, tmp_path / "b2.onnx", SIZE, Thresholds(max_det=50, score_thr=0.2), CLASSES, batch="2")
    det2 = OnnxDetector(tmp_path / "b2.onnx")
    tensor = det2.preprocess.batch(_images(3))[0]
    outs = det2.run_any(tensor)  # 2 + (1 padded to 2): padding rows dropped
    assert [o.shape[0] for o in outs] == [3] * 5
    np.testing.assert_allclose(outs[2][2], det.run(tensor[2:3])[2][0], atol=1e-5)  # the padded chunk's real row


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["yolox_tiny", "retinanet_r18"])
def test_other_single_stage_families_match_pytorch(model_name, tmp_path):
    from cvops.detector.mmdet import load_model
    from cvops.export.build import export_model
    from cvops.export.graph import Thresholds
    from cvops.detector.runtime import OnnxDetector

    files = make_checkpoint(tmp_path, model=model_name, size=SIZE)
    thr = Thresholds(max_det=30, score_thr=0.3, iou_thr=0.6)
    cfg, model = load_model(files["config"], files["checkpoint"], test_cfg=vars(thr))
    if model_name == "retinanet_r18":
        cfg.model.test_cfg["nms_pre"] = 100000  # mmdet's per-level pre-selection is not part of the graph
        model.test_cfg["nms_pre"] = 100000
    export_model(model, cfg, tmp_path / "model.onnx", SIZE, thr, CLASSES)
    det = OnnxDetector(tmp_path / "model.onnx")
    images = _images(2, seed=1)
    ref = _torch_dets(model, det.preprocess, images, max_det=30)
    assert sum(len(r.scores) for r in ref) > 0
    for g, r in zip(det.predict(images), ref):
        _assert_same(g, r)


@pytest.mark.parametrize("name,cls,instead", [("faster_rcnn_r50", "FasterRCNN", "rtmdet_tiny"),
                                              ("mask_rcnn_r50", "MaskRCNN", "rtmdet_ins_tiny")])
def test_two_stage_model_is_refused_with_the_reason(tmp_path, name, cls, instead):
    from cvops.detector.mmdet import load_model
    from cvops.export.build import ExportError, export_model
    from cvops.export.graph import Thresholds

    files = make_checkpoint(tmp_path, model=name, size=SIZE)
    cfg, model = load_model(files["config"], files["checkpoint"])
    with pytest.raises(ExportError, match=rf"{cls} is a two-stage detector.*RoIAlign.*model={instead}\b"):
        export_model(model, cfg, tmp_path / "model.onnx", SIZE, Thresholds(), CLASSES)
    assert not (tmp_path / "model.onnx").exists()


def test_missing_operator_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from cvops.detector.runtime import OnnxDetector

    node = helper.make_node("FancyNMS", ["images"], ["num_dets"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("num_dets", TensorProto.INT32, [1, 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    with pytest.raises(RuntimeError, match=r"cannot load .*m\.onnx: it does not know operator FancyNMS \(opset 18\)"):
        OnnxDetector(tmp_path / "m.onnx")


# ---------------------------------------------------------------- INT8
def _coco(n_images: int, per_class: dict):
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    images = [{"id": i, "file_name": f"/data/{i}.jpg", "width": 64, "height": 64} for i in range(n_images)]
    anns, k = [], 0
    for c, ids in per_class.items():
        for i in ids:
            anns.append({"id": k, "image_id": i, "category_id": CLASSES.index(c) + 1, "bbox": [1, 1, 5, 5]})
            k += 1
    return {"images": images, "annotations": anns, "categories": cats}


def test_calibration_set_covers_every_class_and_is_versioned():
    from cvops.export.quantize import select_calibration

    coco = _coco(100, {"circle": range(0, 90), "square": range(0, 90), "triangle": [97]})  # triangle: one image
    sel = select_calibration(coco, 16, seed=3)
    assert len(sel["images"]) == len(set(sel["images"])) == 16
    assert "/data/97.jpg" in sel["images"] and all(v >= 1 for v in sel["per_class"].values())
    again = select_calibration(coco, 16, seed=3)
    assert again == sel and len(sel["sha256"]) == 64
    assert select_calibration(coco, 16, seed=4)["sha256"] != sel["sha256"]


@pytest.mark.parametrize("coco, n, message", [
    (_coco(5, {"circle": [0], "square": [1], "triangle": [2]}), 16, r"has 5 images but export.calib_images=16"),
    (_coco(50, {"circle": [0], "square": [1]}), 16, r"no image of class\(es\) \['triangle'\]"),
    (_coco(50, {"circle": [0], "square": [1], "triangle": [2]}), 4, r"needs at least 8 images"),
])
def test_calibration_refuses_bad_splits(coco, n, message):
    from cvops.export.quantize import CalibrationError, select_calibration

    with pytest.raises(CalibrationError, match=message):
        select_calibration(coco, n, seed=0)


def test_int8_model_is_qdq_and_keeps_the_contract(exported, tmp_path):
    import cv2
    import onnx

    from cvops.export.quantize import quantize
    from cvops.detector.runtime import OnnxDetector

    out, _, _, contract = exported
    files = []
    for i, im in enumerate(_images(8, seed=5)):
        files.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(files[-1], im)
    from cvops.detector.runtime import Preprocess

    quantize(out / "model.onnx", tmp_path / "int8.onnx", files, Preprocess.from_dict(contract["preprocess"]))
    m = onnx.load(str(tmp_path / "int8.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "NonMaxSuppression"} <= ops
    det = OnnxDetector(tmp_path / "int8.onnx")
    assert det.metadata["cvops.precision"] == "int8-qdq" and det.classes == list(CLASSES)
    assert len(det.predict(_images(2))) == 2


# ---------------------------------------------------------------- Triton + TensorRT
def test_triton_config_parses_into_tritons_model_config(exported, tmp_path):
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from cvops.export.triton import write_repository

    out, _, _, contract = exported
    written = write_repository(tmp_path / "triton", "my-project", out / "model.onnx", contract["io"], 8,
                               json.dumps(contract["preprocess"]))
    assert list(written) == ["my_project_onnx"]
    cfg = text_format.Parse((tmp_path / written["my_project_onnx"]).read_text(), mc.ModelConfig())
    assert (tmp_path / "triton/my_project_onnx/1/model.onnx").exists()
    assert cfg.name == "my_project_onnx" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    model = onnx.load(str(out / "model.onnx"))
    types = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT32: mc.TYPE_INT32}
    for ours, theirs in ((model.graph.input, cfg.input), (model.graph.output, cfg.output)):
        assert [v.name for v in ours] == [t.name for t in theirs]
        for v, t in zip(ours, theirs):
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            assert list(t.dims) == dims[1:]  # batch axis is Triton's
            assert t.data_type == types[v.type.tensor_type.elem_type]
    assert json.loads(cfg.parameters["cvops.preprocess"].string_value) == contract["preprocess"]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]


def test_tensorrt_availability_is_reported_with_its_reason():
    """unavailable() says why exactly when TensorRT or a GPU is missing (here: no GPU, no TensorRT)."""
    from cvops.detector import tensorrt

    why = tensorrt.unavailable()
    try:
        import tensorrt as trt
        import torch

        usable = torch.cuda.is_available() and hasattr(trt.BuilderFlag, "FP16")
    except Exception:
        usable = False
    if usable:
        assert why is None
    else:
        assert why and ("TensorRT" in why or "CUDA" in why)


# ---------------------------------------------------------------- parity gate
def test_gate_passes_the_export_and_fails_a_broken_one(exported, tmp_path):
    """Ground truth = PyTorch's own confident predictions, so PyTorch scores ~1.0 and any deviation shows.

    The broken export is the same graph fed with the wrong channel order (a classic deployment bug).
    """
    import cv2

    from cvops.detector.coco import coco_eval, to_coco
    from cvops.detector.runtime import OnnxDetector, Preprocess
    from cvops.export.stage import parity

    out, _, model, _ = exported
    det = OnnxDetector(out / "model.onnx")
    images = _images(6, seed=7)
    ref = _torch_dets(model, det.preprocess, images)
    # a confidence level well inside the top max_det of every image, so no tie at the max_det cut matters
    conf = max(float(np.sort(r.scores)[::-1][min(15, len(r.scores) - 1)]) for r in ref) + 1e-4
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    torch_dets = []
    for i, (im, r) in enumerate(zip(images, ref)):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), im)
        coco["images"].append({"id": i, "file_name": str(path), "width": im.shape[1], "height": im.shape[0]})
        for d in to_coco(r, i, [1, 2, 3]):
            torch_dets.append(d)
            if d["score"] >= conf:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "iscrowd": 0,
                                            "category_id": d["category_id"], "bbox": d["bbox"],
                                            "area": d["bbox"][2] * d["bbox"][3]})
    assert len(coco["annotations"]) >= 6
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(coco))
    torch_map = coco_eval(ann, torch_dets)[0]["mAP"]
    assert torch_map > 0.9

    good = parity(det.run, det.preprocess, ann, torch_dets, torch_map, max_drop=0.5, conf_thr=conf)
    # an untrained head has exact score ties that two NMS implementations may break differently
    assert good.passed and abs(good.drop) < 0.5 and len(good.rows) <= 1, good.rows

    wrong = Preprocess.from_dict({**det.preprocess.to_dict(), "channel_order": "RGB"})  # runtime feeds RGB
    bad = parity(det.run, wrong, ann, torch_dets, torch_map, max_drop=0.5, conf_thr=conf)
    assert not bad.passed and bad.drop > 0.5
    assert len(bad.rows) > len(good.rows) and {r["file_name"] for r in bad.rows} <= {im["file_name"] for im in coco["images"]}


def test_a_failed_gate_names_each_runtime_and_keeps_the_reports_in_the_run_dir(tmp_path):
    """The runner publishes a committed artifact's reports; a failed gate leaves them in the run dir itself."""
    from types import SimpleNamespace

    from cvops.export.build import ExportError
    from cvops.export.stage import REPORTS, GateResult, fail_if_gate_failed

    work, run_dir = tmp_path / "store" / "export" / "fp", tmp_path / "run"
    work.mkdir(parents=True)
    for rel in REPORTS:
        (work / rel).write_text(rel)
    ctx = SimpleNamespace(workdir=work, run_dir=run_dir, fingerprint="ab" * 8)
    results = {"onnx": GateResult("onnx", 0.60, 0.601, 0.5), "int8": GateResult("int8", 0.55, 0.601, 2.0)}
    assert results["onnx"].passed and not results["int8"].passed and results["int8"].drop == 5.1
    fail_if_gate_failed(ctx, SimpleNamespace(results={"onnx": results["onnx"]}, split="test"), "ds")
    assert not run_dir.exists()  # passed: the runner publishes the reports
    gain = GateResult("onnx", 0.62, 0.601, 0.5)  # parity means equal: 1.9 points better fails too, and says so
    assert gain.drop == -1.9 and not gain.passed and "1.90 mAP points above PyTorch (limit ±0.50)" in gain.verdict()
    with pytest.raises(ExportError, match=r"test split: int8: 5\.10 mAP points below PyTorch \(limit ±2\.00\)\. ") as e:
        fail_if_gate_failed(ctx, SimpleNamespace(results=results, split="test"), "ds")
    assert "onnx" not in str(e.value).split(". The images")[0] and str(run_dir / "export" / "latency.md") in str(e.value)
    assert "tagged export_mismatch:<runtime>:abababab in FiftyOne dataset ds" in str(e.value)  # this export's tags
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == sorted(REPORTS)


def test_engine_fingerprint_mismatch_means_rebuild(tmp_path):
    """An engine built for another TensorRT / GPU architecture is stale (TrtDetector rebuilds it from the ONNX)."""
    from cvops.detector.tensorrt import stale

    here = {"tensorrt": "10.13.0", "cuda": "12.8", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    engine = tmp_path / "model.engine"
    assert "does not exist" in stale(engine, here)
    engine.write_bytes(b"\0")
    assert "fingerprint) is missing" in stale(engine, here)
    engine.with_suffix(".json").write_text(json.dumps({**here, "gpu": "NVIDIA H100 80GB HBM3"}))
    assert stale(engine, here) is None  # same architecture and versions: the GPU's marketing name may differ
    engine.with_suffix(".json").write_text(json.dumps({**here, "compute_capability": "8.0"}))
    assert "compute_capability: built '8.0', here '9.0'" in stale(engine, here)
    engine.with_suffix(".json").write_text(json.dumps({**here, "tensorrt": "10.3.0"}))
    assert "tensorrt" in stale(engine, here)


def test_export_without_a_trained_model_says_which_stages_to_run(cvops):
    r = cvops("project=noexport", "data=synthetic", "stages=[export]")
    assert r.returncode == 2
    assert "needs the 'curate' (fingerprint" in r.stderr and "'train' (fingerprint" in r.stderr
    assert "stages=[curate,train,export]" in r.stderr


@pytest.fixture(scope="module")
def exported_masks(tmp_path_factory):
    """An untrained RTMDet-Ins-tiny (spread head and mask kernels: partial masks of every size) and its ONNX."""
    from cvops.detector.mmdet import load_model
    from cvops.export.build import export_model
    from cvops.export.graph import Thresholds

    out = tmp_path_factory.mktemp("export_masks")
    files = make_checkpoint(out, model="rtmdet_ins_tiny", size=SIZE)
    thr = Thresholds(max_det=50, score_thr=0.2, iou_thr=0.6)
    cfg, model = load_model(files["config"], files["checkpoint"], test_cfg=vars(thr))
    contract = export_model(model, cfg, out / "model.onnx", SIZE, thr, CLASSES)
    return out, model, contract


def test_onnx_masks_equal_mmdet_masks_at_batch_1_and_4(exported_masks):
    """RTMDet-Ins in one graph: for every instance mmdet's predict() keeps, the graph has the same label and
    box, and its mask logits taken to the input resolution (no rescale) give mmdet's mask (IoU >= 0.99);
    batch 1 and 4 agree."""
    from cvops import masks as rle
    from cvops.detector.coco import to_coco
    from cvops.detector.runtime import OnnxDetector
    from cvops.export.stage import torch_runner

    out, model, contract = exported_masks
    assert [o["name"] for o in contract["io"]["outputs"]][-1] == "mask_logits"
    assert contract["io"]["outputs"][-1]["shape"] == ["batch", 50, SIZE[1] // 8, SIZE[0] // 8]
    assert "sigmoid > 0.5" in contract["masks"]  # the way back to the image, in preprocess.json
    assert "sigmoid > 0.5" in json.loads((out / "preprocess.json").read_text())["masks"]
    det = OnnxDetector(out / "model.onnx")
    images = _images(4, seed=3)
    tensor, scales = det.preprocess.batch(images)
    ref = torch_runner(model, det.preprocess)(tensor)
    for batch in (1, 4):
        raw = [det.run(tensor[i:i + batch]) for i in range(0, 4, batch)]
        num, boxes, labels, masks = (np.concatenate([r[k] for r in raw]) for k in (0, 1, 3, 5))
        partial = 0
        for i, sample in enumerate(ref):
            p = sample.pred_instances
            n = int(num[i, 0])
            assert n == len(p.scores) > 0
            for bx, lab, m in zip(p.bboxes.numpy(), p.labels.numpy(), p.masks.numpy()):
                d = np.abs(boxes[i, :n] - bx).sum(-1) + 1e6 * (labels[i, :n] != lab)
                j = int(d.argmin())
                assert d[j] < 0.05, (i, bx, lab)  # same label, same box
                got = rle.logits_to_instances(masks[i, j:j + 1], 8, (1.0, 1.0), SIZE)[0]
                union = (got | m).sum()
                assert union == 0 or (got & m).sum() / union >= 0.99
                partial += 0 < m.sum() < m.size
        assert partial >= 10  # the comparison covers real shapes, not only empty or full masks
    # in original pixels: each image's own size, and the RLE decodes to the same mask
    dets = det.predict(images)
    for im, d in zip(images, dets):
        assert d.masks.shape == (len(d.scores), im.shape[0], im.shape[1]) and d.masks.dtype == bool
        for r, m in zip(to_coco(d, 1, [1, 2, 3]), d.masks):
            np.testing.assert_array_equal(rle.decode(r["segmentation"]), m)


def test_mask_gate_passes_the_export_and_fails_broken_masks(exported_masks, tmp_path):
    """Instance segmentation: the gate scores masks too. Ground truth = PyTorch's own confident instances (box
    and mask); the export passes on both, and the same graph with its masks shifted by 3 pixels (boxes intact,
    as a wrong mask crop or stride would leave them) passes on boxes and fails on masks."""
    import cv2

    from cvops import masks as rle
    from cvops.detector.coco import coco_eval
    from cvops.detector.runtime import OnnxDetector
    from cvops.export.stage import parity, predict_split

    out, _, _ = exported_masks
    det = OnnxDetector(out / "model.onnx")
    images = _images(6, seed=11)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for i, im in enumerate(images):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), im)
        coco["images"].append({"id": i, "file_name": str(path), "width": im.shape[1], "height": im.shape[0]})
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(coco))
    # the reference: PyTorch stands in for itself through the graph here (test_onnx_masks_equal_mmdet_masks...
    # proves the two equal); ground truth = its confident instances (an untrained head leaves some masks
    # empty, which COCOeval never matches: the reference's mask mAP is lower than its box mAP)
    torch_dets = predict_split(det.run_any, det.preprocess, coco["images"], [1, 2, 3])
    for d in torch_dets:
        if d["score"] >= 0.3:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": d["image_id"], "iscrowd": 0,
                                        "category_id": d["category_id"], "bbox": d["bbox"],
                                        "segmentation": d["segmentation"], "area": rle.area(d["segmentation"])})
    assert len(coco["annotations"]) >= 6
    ann.write_text(json.dumps(coco))
    torch_map = coco_eval(ann, torch_dets)[0]["mAP"]
    torch_segm = coco_eval(ann, torch_dets, "segm")[0]["mAP"]
    assert torch_map > 0.9 and torch_segm > 0.5, (torch_map, torch_segm)

    good = parity(det.run_any, det.preprocess, ann, torch_dets, torch_map, 0.5, 0.3, torch_segm_map=torch_segm)
    assert good.passed and good.segm_drop == 0.0 and good.drop == 0.0

    def shifted(tensor):
        outs = det.run_any(tensor)
        outs[5] = np.roll(outs[5], 1, axis=(-1, -2))  # one prototype cell: 8 input pixels
        return outs

    bad = parity(shifted, det.preprocess, ann, torch_dets, torch_map, 0.5, 0.3, runtime="onnx",
                 torch_segm_map=torch_segm)
    assert bad.drop == 0.0 and bad.segm_drop > 0.5 and not bad.passed
    assert bad.mask_iou["p5"] < 0.9 < good.mask_iou["p5"] and good.mask_iou["median"] == 1.0
    assert "mask mAP points below PyTorch" in bad.verdict() and "5th percentile" in bad.verdict()
    # the IoU alone fails a mask path that moves every instance a little (no mAP limit reached)
    blurred = parity(shifted, det.preprocess, ann, torch_dets, torch_map, 100.0, 0.3, torch_segm_map=torch_segm,
                     min_mask_iou=0.99)
    assert blurred.mask_iou["median"] < 0.99 and not blurred.passed and "IoU median" in blurred.verdict()

    def boxes_only(tensor):
        return det.run_any(tensor)[:5]

    with pytest.raises(ValueError, match="without masks"):
        parity(boxes_only, det.preprocess, ann, torch_dets, torch_map, 0.5, 0.3, torch_segm_map=torch_segm)


def test_int8_mask_model_keeps_its_masks(exported_masks, tmp_path):
    """INT8 of an instance segmentation graph: only the network's convolutions are quantized (the mask
    assembly after NMS stays float), and the masks output is still there and agrees with FP32."""
    import cv2
    import onnx

    from cvops.detector.runtime import OnnxDetector
    from cvops.export.quantize import quantize

    out, _, contract = exported_masks
    files = []
    for i, im in enumerate(_images(8, seed=5)):
        files.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(files[-1], im)
    det = OnnxDetector(out / "model.onnx")
    quantize(out / "model.onnx", tmp_path / "int8.onnx", files, det.preprocess)
    m = onnx.load(str(tmp_path / "int8.onnx"))
    producers = {o: n for n in m.graph.node for o in n.output}
    mat = [n for n in m.graph.node if n.op_type == "MatMul"]
    assert mat and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for n in mat for i in n.input)  # the per-instance dynamic convs are not quantized
    q = OnnxDetector(tmp_path / "int8.onnx")
    assert q.outputs[-1] == "mask_logits"
    fp, i8 = det.predict(_images(2, seed=3)), q.predict(_images(2, seed=3))
    assert all(d.masks is not None and d.masks.shape[1:] == f.masks.shape[1:] for d, f in zip(i8, fp))


def test_masks_in_original_pixels_equal_mmdet(exported_masks, tmp_path):
    """The exported masks in original pixels equal mmdet's own predict() with rescale (its test pipeline on image
    files of many sizes and aspect ratios, letterboxed both ways): per-instance mask IoU, instances matched by box,
    median and 5th percentile >= 0.99 (the issue asks 0.99 / 0.95; this path is exact, 1.0 / 1.0 here, while
    thresholding at the input resolution before the resize, as cvops did, gave 0.983 for the 5th percentile)."""
    import cv2

    from cvops.detector.coco import read_split
    from cvops.detector.mmdet import predict
    from cvops.detector.runtime import OnnxDetector
    from cvops.export.stage import iou_summary, mask_ious, predict_split

    out, _, _ = exported_masks
    rng = np.random.default_rng(2)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for i in range(10):  # wide, tall, smaller and larger than the 128 px input
        w, h = int(rng.integers(60, 900)), int(rng.integers(60, 900))
        img = _images(1, seed=100 + i)[0]
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), cv2.resize(img, (w, h)))
        coco["images"].append({"id": i, "file_name": str(path), "width": w, "height": h})
    ann = tmp_path / "split.json"
    ann.write_text(json.dumps(coco))
    torch_dets = predict(out / "config.py", out / "checkpoint.pth", ann, "cpu", 0.2, 50, iou_thr=0.6)
    det = OnnxDetector(out / "model.onnx")
    images, cat_ids = read_split(ann)
    onnx_dets = predict_split(det.run_any, det.preprocess, images, cat_ids)
    rows = mask_ious(torch_dets, onnx_dets, images, 0.2)
    summary = iou_summary(rows)
    assert summary["instances"] == sum(d["score"] >= 0.2 for d in torch_dets) >= 100, summary  # every one matched
    assert summary["median"] >= 0.99 and summary["p5"] >= 0.99, summary
