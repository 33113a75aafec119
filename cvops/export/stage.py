"""The export stage: ONNX (+ INT8, + TensorRT), proven to be the trained model.

1. **Export**: one ONNX graph, image tensor -> ``num_dets, boxes, scores,
   labels`` with decoding and NMS inside (:mod:`cvops.export.graph`), the
   preprocessing contract beside it (``preprocess.json``) and in its metadata.
2. **Parity gate**: the exported model, run by ONNX Runtime on the curated test
   split (val when test is empty), is scored by the evaluate stage's COCO
   evaluator against the PyTorch model with the same thresholds; a difference
   of more than ``export.gate.max_map_drop`` mAP points either way fails the
   stage (parity means equal: a gain says the runtime computes something else
   as surely as a loss). An instance segmentation model is gated on its mask
   mAP with the same limit and on the per-instance mask IoU between PyTorch and
   the runtime (instances matched by box; its median must reach
   ``export.gate.min_mask_iou``: a mask path that computes something else
   moves every instance, while quantization moves a few small ones). Images where the
   two disagree (a box above ``evaluate.confusion_score_thr`` without a
   same-class IoU >= 0.5 partner) are tagged ``export_mismatch:<format>:<export>`` in
   the FiftyOne dataset and listed in ``disagreements.csv``.
3. **INT8** (``export.int8``): QDQ model calibrated on curated train images
   (``calibration.json``), gated by ``export.gate.int8_max_map_drop``.
4. **TensorRT** (``export.format=tensorrt``): engine(s) with a fingerprint;
   recorded ``skipped`` (with the command to run on a GPU host) where TensorRT or
   a GPU is missing. The ONNX artifacts are still built and used downstream.
5. **Latency**: PyTorch eager vs ONNX Runtime FP32 vs INT8 (vs TensorRT) at
   batch 1 and 8 on the same preprocessed images: ``latency.md``/``.csv``/``.png``.
6. **Triton**: a model repository under ``triton/``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cvops.detector.runtime import (MASKS, OnnxDetector, Preprocess, box_iou, latency, run_padded,
                                  split_outputs)
from cvops.detector.coco import coco_eval, read_split, to_coco
from cvops.schema import ExportConfig, ExportFormat
from cvops.export.checks import check
from cvops.stages import StageContext, StageResult

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
GPU_CHECK = "benchmarks/gpu_export_check.py"
#: What ``<run_dir>/export/`` shows (``StageResult.reports``; published by the runner, ran or cached).
REPORTS = ("latency.md", "latency.csv", "latency.png", "disagreements.csv", "preprocess.json")


# ------------------------------------------------------------ prediction
def predict_split(run: Any, pre: Preprocess, images: Sequence[Dict[str, Any]], cat_ids: Sequence[int],
                  batch: int = 8) -> List[Dict[str, Any]]:
    """COCO-format detections of a raw-output runner (``run(tensor) -> outputs``) on a split."""
    import cv2
    from cvops.console import track

    out: List[Dict[str, Any]] = []
    for i in track(range(0, len(images), batch), "export: parity"):
        chunk = images[i:i + batch]
        bgr = [cv2.imread(im["file_name"], cv2.IMREAD_COLOR) for im in chunk]
        tensor, scales = pre.batch(bgr)
        dets = split_outputs(run(tensor), scales, [(b.shape[1], b.shape[0]) for b in bgr], pre)
        for im, d in zip(chunk, dets):
            out.extend(to_coco(d, im["id"], cat_ids))
    return out


def _by_image(dets: List[Dict[str, Any]], score_thr: float) -> Dict[int, List[Dict[str, Any]]]:
    out: Dict[int, List[Dict[str, Any]]] = {}
    for d in dets:
        if d["score"] >= score_thr:
            out.setdefault(d["image_id"], []).append(d)
    return out


def match(r: List[Dict[str, Any]], e: List[Dict[str, Any]], iou_thr: float = 0.5) -> List[Tuple[int, int]]:
    """Pairs (i, j) of one image's detections ``r`` and ``e`` of the same class with box IoU >= ``iou_thr``,
    greedily by IoU (each detection in at most one pair)."""
    if not r or not e:
        return []
    xyxy = lambda ds: np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],  # noqa: E731
                                 d["bbox"][1] + d["bbox"][3]] for d in ds])
    a, b = xyxy(r), xyxy(e)
    iou = box_iou(a, b)
    # the same box is a match even without area (a box past the image's edge, clipped to a line)
    iou = np.where(np.abs(a[:, None] - b[None]).max(-1) < 1e-3, 1.0, iou)
    same = np.array([[x["category_id"] == y["category_id"] for y in e] for x in r])
    iou = np.where(same, iou, 0.0)
    pairs, used_r, used_e = [], set(), set()
    for i, j in sorted(np.argwhere(iou >= iou_thr).tolist(), key=lambda ij: -iou[ij[0], ij[1]]):
        if i not in used_r and j not in used_e:
            used_r.add(i)
            used_e.add(j)
            pairs.append((i, j))
    return pairs


def disagreements(reference: List[Dict[str, Any]], exported: List[Dict[str, Any]], images: Sequence[Dict[str, Any]],
                  score_thr: float, iou_thr: float = 0.5) -> List[Dict[str, Any]]:
    """Per image: reference boxes the export missed and boxes it added (score >= score_thr)."""
    ref, exp = _by_image(reference, score_thr), _by_image(exported, score_thr)
    rows = []
    for im in images:
        r, e = ref.get(im["id"], []), exp.get(im["id"], [])
        n = len(match(r, e, iou_thr))
        missed, extra = len(r) - n, len(e) - n
        if missed or extra:
            rows.append({"file_name": im["file_name"], "image_id": im["id"], "missed": missed, "extra": extra})
    return rows


def mask_ious(reference: List[Dict[str, Any]], exported: List[Dict[str, Any]], images: Sequence[Dict[str, Any]],
              score_thr: float, iou_thr: float = 0.5) -> List[Dict[str, Any]]:
    """Per-instance mask IoU of an exported model against the reference: every reference instance scored
    >= ``score_thr`` matched by box (same class, IoU >= ``iou_thr``, any score) to an exported one; one row
    ``{file_name, image_id, score, iou}`` per matched pair (a missed instance is a box disagreement already)."""
    from pycocotools import mask as mask_utils

    ref, exp = _by_image(reference, score_thr), _by_image(exported, 0.0)
    rows = []
    for im in images:
        r, e = ref.get(im["id"], []), exp.get(im["id"], [])
        for i, j in match(r, e, iou_thr):
            a, b = r[i]["segmentation"], e[j]["segmentation"]
            iou = float(mask_utils.iou([dict(a)], [dict(b)], [0])[0, 0])
            if not mask_utils.area(dict(a)) and not mask_utils.area(dict(b)):
                iou = 1.0  # both empty: the same (pycocotools says 0)
            rows.append({"file_name": im["file_name"], "image_id": im["id"], "score": r[i]["score"], "iou": iou})
    return rows


def iou_summary(rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Median, 5th percentile and the worst instance of :func:`mask_ious` rows (None without rows)."""
    if not rows:
        return None
    v = np.array([r["iou"] for r in rows])
    worst = rows[int(v.argmin())]
    return {"instances": len(rows), "median": round(float(np.median(v)), 4), "p5": round(float(np.percentile(v, 5)), 4),
            "worst": round(float(v.min()), 4), "worst_file": worst["file_name"]}


@dataclass
class GateResult:
    """One runtime's parity check against PyTorch on the gate split: box mAP, and mask mAP for an instance
    segmentation model (both must stay within ``limit``)."""

    runtime: str
    map: float  # the runtime's COCO box mAP
    torch_map: float  # PyTorch's, same thresholds, same split
    limit: float  # export.gate.max_map_drop / int8_max_map_drop (mAP points)
    rows: List[Dict[str, Any]] = field(default_factory=list)  # images where the two disagree
    segm_map: Optional[float] = None  # the runtime's COCO mask mAP (mask models)
    torch_segm_map: Optional[float] = None
    mask_iou: Optional[Dict[str, Any]] = None  # per-instance mask IoU against PyTorch (:func:`iou_summary`)
    min_mask_iou: float = 0.0  # the median of mask_iou must reach it (mask models)

    @property
    def drop(self) -> float:
        """Box mAP points lost against PyTorch (negative: the runtime scored higher)."""
        return round((self.torch_map - self.map) * 100, 3)

    @property
    def segm_drop(self) -> Optional[float]:
        """Mask mAP points lost against PyTorch (None for a box-only model)."""
        if self.segm_map is None or self.torch_segm_map is None:
            return None
        return round((self.torch_segm_map - self.segm_map) * 100, 3)

    @property
    def passed(self) -> bool:
        """Parity means equal: a gain beyond the limit fails like a loss (either way the runtime computes
        something else than the model)."""
        masks_ok = self.segm_drop is None or abs(self.segm_drop) <= self.limit
        iou_ok = self.mask_iou is None or self.mask_iou["median"] >= self.min_mask_iou
        return abs(self.drop) <= self.limit and masks_ok and iou_ok

    def verdict(self) -> str:
        def side(points: float, what: str) -> str:
            return f"{abs(points):.2f} {what} points {'below' if points >= 0 else 'above'} PyTorch"

        parts = [side(self.drop, "mAP")]
        if self.segm_drop is not None:
            parts.append(side(self.segm_drop, "mask mAP"))
        text = f"{self.runtime}: {', '.join(parts)} (limit ±{self.limit:.2f})"
        if self.mask_iou is not None:
            m = self.mask_iou
            text += (f"; per-instance mask IoU median {m['median']:.3f} (limit {self.min_mask_iou:.2f}), 5th "
                     f"percentile {m['p5']:.3f}, worst {m['worst']:.3f} on {Path(m['worst_file']).name}")
        return text


def parity(run_fn: Any, pre: Preprocess, ann: Path, torch_dets: List[Dict[str, Any]], torch_map: float,
           max_drop: float, conf_thr: float, runtime: str = "onnx",
           torch_segm_map: Optional[float] = None, min_mask_iou: float = 0.0) -> GateResult:
    """The gate for one runtime: its mAP on ``ann`` vs PyTorch's (and, when ``torch_segm_map`` is given, its
    mask mAP and per-instance mask IoU), and where they disagree."""
    images, cat_ids = read_split(ann)
    dets = predict_split(run_fn, pre, images, cat_ids)
    segm_map = None
    if torch_segm_map is not None:
        if dets and not all("segmentation" in d for d in dets):
            raise ValueError(f"export gate: the {runtime} model returned boxes without masks; the PyTorch model "
                             "predicts instance masks (was the graph exported without its masks output?)")
        segm_map = coco_eval(ann, dets, "segm")[0]["mAP"]
    return GateResult(runtime, coco_eval(ann, dets)[0]["mAP"], torch_map, max_drop,
                      disagreements(torch_dets, dets, images, conf_thr), segm_map, torch_segm_map,
                      iou_summary(mask_ious(torch_dets, dets, images, conf_thr)) if segm_map is not None else None,
                      min_mask_iou)


# ------------------------------------------------------------ latency
def torch_runner(model: Any, pre: Preprocess) -> Any:
    """PyTorch eager inference (network + mmdet post-processing) on a preprocessed batch."""
    import torch
    from mmdet.structures import DetDataSample

    def run(tensor: np.ndarray) -> Any:
        x = torch.from_numpy(tensor)
        samples = []
        for _ in range(x.shape[0]):
            s = DetDataSample()
            shape = (pre.height, pre.width)
            s.set_metainfo(dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                                scale_factor=(1.0, 1.0)))
            samples.append(s)
        with torch.no_grad():
            return model.predict(x, samples, rescale=False)

    return run


def latency_table(runners: Dict[str, Any], pre: Preprocess, images: List[np.ndarray], repeats: int) -> List[Dict[str, Any]]:
    rows = []
    for name, run in runners.items():
        for b in (1, 8):
            batch = [images[i % len(images)] for i in range(b)]
            tensor, _ = pre.batch(batch)
            r = latency(lambda: run(tensor), warmup=2, repeats=repeats if b == 1 else max(3, repeats // 4))
            rows.append({"runtime": name, "batch": b, **r, "per_image_ms": round(r["median_ms"] / b, 2)})
            log.info("  export: latency %-16s batch %d  median %.1f ms  p90 %.1f ms", name, b, r["median_ms"], r["p90_ms"])
    return rows


def _plot_latency(path: Path, rows: List[Dict[str, Any]], maps: Dict[str, Optional[float]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    names = list(dict.fromkeys(r["runtime"] for r in rows))
    x = np.arange(len(names))
    for k, b in enumerate((1, 8)):
        vals = [next((r["per_image_ms"] for r in rows if r["runtime"] == n and r["batch"] == b), 0) for n in names]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=f"batch {b} (per image)")
    ax.set_xticks(x, [f"{n}\nmAP {maps.get(n):.3f}" if maps.get(n) is not None else n for n in names], fontsize=8)
    ax.set_ylabel("ms per image (median)")
    ax.set_title("export latency (CPU unless TensorRT)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------ FiftyOne
def tag_disagreements(dataset: str, rows: List[Dict[str, Any]], tag: str) -> int:
    """Tag the images where the export disagrees with PyTorch; returns how many were tagged."""
    from cvops.fo import edit_dataset

    with edit_dataset(dataset, "the curate stage") as ds:  # other runs may write into it at the same time
        ds.untag_samples(tag)
        if rows:
            ds.select_by("filepath", [r["file_name"] for r in rows]).tag_samples(tag)
    return len(rows)


# ------------------------------------------------------------ stage
class Gate:
    """The parity gate: every exported runtime against PyTorch on one curated split."""

    def __init__(self, curate: Any, train: Any, pre: Preprocess, thr: Any, conf_thr: float,
                 masks: bool = False) -> None:
        from cvops.detector.mmdet import predict
        from cvops.export.build import ExportError

        names = curate.manifest.get("artifacts", {})
        self.split = "test" if "coco_test" in names and read_split(curate.path("coco_test"))[0] else "val"
        self.ann = curate.path(f"coco_{self.split}")
        self.images, _ = read_split(self.ann)
        if not self.images:
            raise ExportError("the curated test and val splits are empty: nothing to check the export on")
        self.pre, self.conf_thr = pre, conf_thr
        self.torch_dets = predict(train.path("config"), train.path("checkpoint"), self.ann, "cpu", thr.score_thr,
                                  thr.max_det, iou_thr=thr.iou_thr)
        self.torch_map = coco_eval(self.ann, self.torch_dets)[0]["mAP"]
        #: mask mAP of PyTorch for an instance segmentation model (its masks are gated too), else None
        self.torch_segm_map = coco_eval(self.ann, self.torch_dets, "segm")[0]["mAP"] if masks else None
        self.results: Dict[str, GateResult] = {}
        self.runners: Dict[str, Any] = {}

    def check(self, name: str, run_fn: Any, limit: float, min_mask_iou: float = 0.0) -> GateResult:
        """Gate one runtime (``run_fn``: tensor -> raw outputs) at ``limit`` mAP points either way (and, for a
        mask model, the median per-instance mask IoU at ``min_mask_iou``); kept for the latency table and the
        disagreements."""
        r = parity(run_fn, self.pre, self.ann, self.torch_dets, self.torch_map, limit, self.conf_thr, runtime=name,
                   torch_segm_map=self.torch_segm_map, min_mask_iou=min_mask_iou)
        self.results[name], self.runners[name] = r, run_fn
        log.info("  export: %-8s mAP %.4f vs PyTorch %.4f: difference %+.2f points (limit ±%.2f) -> %s; "
                 "%d image(s) disagree", name, r.map, r.torch_map, -r.drop, limit, "pass" if r.passed else "FAIL",
                 len(r.rows))
        if r.segm_drop is not None:
            log.info("  export: %-8s mask mAP %.4f vs PyTorch %.4f: difference %+.2f points", name, r.segm_map,
                     r.torch_segm_map, -r.segm_drop)
        if r.mask_iou is not None:
            m = r.mask_iou
            log.info("  export: %-8s per-instance mask IoU vs PyTorch: median %.4f (limit %.2f), 5th percentile "
                     "%.4f, worst %.4f (%s), %d instances", name, m["median"], min_mask_iou, m["p5"], m["worst"],
                     Path(m["worst_file"]).name, m["instances"])
        return r


def run(ctx: StageContext) -> StageResult:
    """Export the trained model to ONNX (+ INT8, + TensorRT), gate each against PyTorch, time them, and
    write the Triton repository; fails when a gate fails (the artifact is not kept)."""
    import torch

    from cvops.detector.mmdet import load_model
    from cvops.export.graph import Thresholds

    ex = ctx.config.export
    check(ex)  # the preflight checked it already; a direct call of run() too
    curate, train = ctx.inputs["curate"], ctx.inputs["train"]
    masks = bool(train.metrics.get("masks"))  # instance segmentation: the graph returns masks, gated on mask mAP
    work = ctx.workdir
    thr = Thresholds(max_det=ex.max_det, score_thr=ex.score_thr, iou_thr=ex.iou_thr)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg, model = load_model(train.path("config"), train.path("checkpoint"), "cpu", test_cfg=vars(thr))

    contract = build_onnx(ctx, model, cfg, thr)
    pre = Preprocess.from_dict(contract["preprocess"])
    if masks and MASKS not in [o["name"] for o in contract["io"]["outputs"]]:
        from cvops.export.build import ExportError

        raise ExportError(f"export: {ctx.config.model.name} predicts instance masks but its ONNX graph has no "
                          "masks output; exporting it would drop them")
    gate = Gate(curate, train, pre, thr, ctx.config.evaluate.confusion_score_thr, masks=masks)
    gate.check("onnx", OnnxDetector(work / "model.onnx").run_any, ex.gate.max_map_drop, ex.gate.min_mask_iou)
    artifacts = {"onnx": "model.onnx", "preprocess": "preprocess.json"}

    calibrate_precision(work, curate, pre, gate, float(ctx.config.confidence), artifacts)
    calibration = build_int8(work, ex, curate, pre, gate, artifacts) if ex.int8 else None
    engine, skipped = None, None
    if ex.format is ExportFormat.tensorrt:
        engine, skipped = build_tensorrt(ctx, pre, calibration, gate, artifacts)

    rows = latency_step(work, ex, model, pre, gate, artifacts)
    write_disagreements(work, gate, curate.metrics["dataset_name"], artifacts, ctx.fingerprint)
    if ex.triton:
        write_triton(work, ctx.config.project, contract, ex, engine, artifacts)
    metrics = _metrics(work, ex, gate, rows, contract, skipped)
    fail_if_gate_failed(ctx, gate, curate.metrics["dataset_name"])
    return StageResult(artifacts, metrics, skipped=skipped, reports=list(REPORTS))


def fail_if_gate_failed(ctx: StageContext, gate: Gate, dataset: str) -> None:
    """Raise :class:`ExportError` naming every runtime over its limit. The reports are copied into the run
    dir first (``<run_dir>/export/``): the runner publishes only a committed artifact's reports, and the
    failed build's own folder is wiped by the next attempt."""
    import shutil

    from cvops.export.build import ExportError

    failed = [r.verdict() for r in gate.results.values() if not r.passed]
    if not failed:
        return
    out = ctx.run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    for rel in REPORTS:
        shutil.copy2(ctx.workdir / rel, out / rel)
    raise ExportError(
        f"export gate failed on the {gate.split} split: {'; '.join(failed)}. The images where the export disagrees "
        f"are tagged {mismatch_tag('<runtime>', ctx.fingerprint)} in FiftyOne dataset {dataset} (cvops app recipe=...) "
        f"and listed in "
        f"{out / 'disagreements.csv'}; latency and mAP in {out / 'latency.md'}")


def build_onnx(ctx: StageContext, model: Any, cfg: Any, thr: Any) -> Dict[str, Any]:
    """Step 1: ``model.onnx`` (decoding and NMS inside) and its preprocessing contract; returns the contract."""
    from cvops.export.build import export_model

    ex, curate, train, work = ctx.config.export, ctx.inputs["curate"], ctx.inputs["train"], ctx.workdir
    meta = {"project": ctx.config.project, "dataset_version": curate.metrics.get("dataset_version"),
            "train_fingerprint": train.fingerprint, "export_fingerprint": ctx.fingerprint,
            "model": ctx.config.model.name}
    contract = export_model(model, cfg, work / "model.onnx", list(ctx.config.model.image_size), thr,
                            list(curate.metrics["classes"]), batch=ex.batch, opset=ex.opset, metadata=meta)
    log.info("  export: model.onnx (%s, opset %s, batch %s) %.1f MB", contract["family"], contract["opset"],
             contract["batch"], (work / "model.onnx").stat().st_size / 2**20)
    return contract


def calibrate_precision(work: Path, curate: Any, pre: Preprocess, gate: Gate, confidence: float,
                        artifacts: Dict[str, str]) -> None:
    """``precision_calibration.json``: the ONNX model's score calibrated into "this box is right" per class on
    the validation split (the gate's split when val is empty), for the served precision estimate
    (:mod:`cvops.detector.calibration`)."""
    from cvops.detector.calibration import fit

    split = "val" if read_split(curate.path("coco_val"))[0] else gate.split
    ann = curate.path(f"coco_{split}")
    coco = json.loads(Path(ann).read_text(encoding="utf-8"))
    cat_ids = [c["id"] for c in coco["categories"]]
    dets = predict_split(gate.runners["onnx"], pre, coco["images"], cat_ids)
    cal = fit(coco, dets, confidence, split=split)
    (work / "precision_calibration.json").write_text(json.dumps(cal, indent=1))
    artifacts["precision_calibration"] = "precision_calibration.json"
    ref = cal["reference"].get("all")
    log.info("  export: precision calibration on the %s split (%d images, %d boxes): precision at confidence "
             ">= %.2f is %s", split, cal["images"], cal["boxes"].get("all", 0), confidence,
             "n/a (no box)" if ref is None else f"{ref:.3f}")


def build_int8(work: Path, ex: ExportConfig, curate: Any, pre: Preprocess, gate: Gate,
               artifacts: Dict[str, str]) -> Dict[str, Any]:
    """Step 3: ``model_int8.onnx`` (QDQ, calibrated on curated train images), gated; returns the calibration."""
    from cvops.export.quantize import quantize, select_calibration, write_calibration

    sel = select_calibration(json.loads(curate.path("coco_train").read_text()), ex.calib_images, ex.calib_seed)
    write_calibration(work / "calibration.json", sel)
    log.info("  export: INT8 calibration on %d train images (%s)", len(sel["images"]),
             ", ".join(f"{k} {v}" for k, v in sel["per_class"].items()))
    quantize(work / "model.onnx", work / "model_int8.onnx", sel["images"], pre, method=ex.calib_method.value)
    gate.check("int8", OnnxDetector(work / "model_int8.onnx").run_any, ex.gate.int8_max_map_drop,
               ex.gate.int8_min_mask_iou)
    artifacts.update({"onnx_int8": "model_int8.onnx", "calibration": "calibration.json"})
    return sel


def build_tensorrt(ctx: StageContext, pre: Preprocess, calibration: Optional[Dict[str, Any]], gate: Gate,
                   artifacts: Dict[str, str]) -> Tuple[Optional[Path], Optional[str]]:
    """Step 4: the TensorRT engine, gated; returns (engine, None), or (None, why) where TensorRT or a GPU is
    missing (the stage is then recorded skipped with the command to run on a GPU host)."""
    from cvops.detector import tensorrt as trt
    from cvops.export.quantize import quantize

    ex, work = ctx.config.export, ctx.workdir
    why = trt.unavailable()
    if why:
        skipped = (f"TensorRT engine not built: {why}. On a GPU host with TensorRT 10+ "
                   f"(pip install -e '.[tensorrt]') run: cvops {' '.join(_recipe_args(ctx))} stages=[export] "
                   f"(or python {GPU_CHECK} for build, parity and latency in one go). The ONNX models are built "
                   "and gated.")
        log.warning("  export: %s", skipped)
        return None, skipped
    t = ex.tensorrt
    int8 = t.int8 and calibration is not None
    if int8:
        quantize(work / "model.onnx", work / "model_int8_trt.onnx", calibration["images"], pre,
                 method=ex.calib_method.value, target="tensorrt")
        artifacts["onnx_int8_trt"] = "model_int8_trt.onnx"
    src = work / ("model_int8_trt.onnx" if int8 else "model.onnx")
    engine = work / ("model_int8.engine" if int8 else "model.engine")
    info = trt.build_engine(src, engine, input_shape=[3, pre.height, pre.width], fp16=t.fp16, int8=int8,
                            workspace_gb=t.workspace_gb, min_batch=t.min_batch, opt_batch=t.opt_batch,
                            max_batch=t.max_batch, timing_cache=work / "timing.cache" if t.timing_cache else None)
    log.info("  export: TensorRT %s engine built in %.1f s on %s", info["tensorrt"], info["build_seconds"], info["gpu"])
    trt_det = trt.TrtDetector(engine, src)
    gate.check("tensorrt", lambda x: run_padded(trt_det.run, x, trt_det.fixed_batch),
               ex.gate.int8_max_map_drop if int8 else ex.gate.max_map_drop,
               ex.gate.int8_min_mask_iou if int8 else ex.gate.min_mask_iou)
    artifacts.update({"engine": engine.name, "engine_fingerprint": engine.with_suffix(".json").name})
    return engine, None


def latency_step(work: Path, ex: ExportConfig, model: Any, pre: Preprocess, gate: Gate,
                 artifacts: Dict[str, str]) -> List[Dict[str, Any]]:
    """Step 5: PyTorch vs every gated runtime at batch 1 and 8 on the same images: table, CSV, plot."""
    import cv2

    images = [cv2.imread(im["file_name"], cv2.IMREAD_COLOR) for im in gate.images[:8]]
    rows = latency_table({"pytorch": torch_runner(model, pre), **gate.runners}, pre, images, ex.latency_repeats)
    maps = {"pytorch": gate.torch_map, **{k: v.map for k, v in gate.results.items()}}
    _write_latency(work, rows, maps, gate.results)
    _plot_latency(work / "latency.png", rows, maps)
    artifacts.update({"latency": "latency.md", "latency_csv": "latency.csv", "latency_plot": "latency.png"})
    return rows


def mismatch_tag(runtime: str, fingerprint: str) -> str:
    """The FiftyOne tag of the images where one export's runtime disagrees with PyTorch. Named by the export
    (the dataset is shared by every export of its curate artifact: each keeps its own tags)."""
    return f"export_mismatch:{runtime}:{fingerprint[:8]}"


def write_disagreements(work: Path, gate: Gate, dataset: str, artifacts: Dict[str, str], fingerprint: str) -> None:
    """``disagreements.csv`` and the ``export_mismatch:<runtime>:<export>`` tags in the FiftyOne dataset."""
    lines = ["runtime,file_name,missed,extra"]
    for name, r in gate.results.items():
        lines += [f"{name},{row['file_name']},{row['missed']},{row['extra']}" for row in r.rows]
        tag_disagreements(dataset, r.rows, mismatch_tag(name, fingerprint))
    (work / "disagreements.csv").write_text("\n".join(lines) + "\n")
    artifacts["disagreements"] = "disagreements.csv"


def write_triton(work: Path, project: str, contract: Dict[str, Any], ex: ExportConfig, engine: Optional[Path],
                 artifacts: Dict[str, str]) -> None:
    """Step 6: a Triton model repository under ``triton/``."""
    from cvops.export.triton import write_repository

    repo = work / "triton"
    models = write_repository(repo, project, work / "model.onnx", contract["io"], ex.tensorrt.max_batch,
                              json.dumps(contract["preprocess"]), engine)
    artifacts["triton"] = "triton"
    log.info("  export: Triton model repository %s (%s)", repo, ", ".join(models))


def _metrics(work: Path, ex: ExportConfig, gate: Gate, rows: List[Dict[str, Any]], contract: Dict[str, Any],
             skipped: Optional[str]) -> Dict[str, Any]:
    """``run.json``'s ``stages.export.metrics``: the gate, mAP and latency of every runtime, the graph."""
    res = gate.results

    def ms(name: str, b: int = 1) -> Optional[float]:
        return next((r["median_ms"] for r in rows if r["runtime"] == name and r["batch"] == b), None)

    metrics: Dict[str, Any] = {
        "gate": "pass" if all(r.passed for r in res.values()) else "fail", "gate_split": gate.split,
        "torch_map": gate.torch_map, "onnx_map": res["onnx"].map, "map_drop": res["onnx"].drop,
        "int8_map": res["int8"].map if "int8" in res else None,
        "int8_map_drop": res["int8"].drop if "int8" in res else None,
        "masks": gate.torch_segm_map is not None,
        "torch_ms": ms("pytorch"), "onnx_ms": ms("onnx"), "int8_ms": ms("int8"),
        "torch_ms_b8": ms("pytorch", 8), "onnx_ms_b8": ms("onnx", 8), "int8_ms_b8": ms("int8", 8),
        "onnx_speedup": _ratio(ms("pytorch"), ms("onnx")), "int8_speedup": _ratio(ms("pytorch"), ms("int8")),
        "disagreeing_images": {k: len(v.rows) for k, v in res.items()},
        "family": contract["family"], "opset": contract["opset"], "batch": contract["batch"],
        "onnx_mb": round((work / "model.onnx").stat().st_size / 2**20, 2),
    }
    if gate.torch_segm_map is not None:  # instance segmentation: the masks' gate
        metrics.update({"torch_segm_map": gate.torch_segm_map, "onnx_segm_map": res["onnx"].segm_map,
                        "segm_map_drop": res["onnx"].segm_drop,
                        "int8_segm_map": res["int8"].segm_map if "int8" in res else None,
                        "int8_segm_map_drop": res["int8"].segm_drop if "int8" in res else None,
                        "mask_iou": res["onnx"].mask_iou,
                        "int8_mask_iou": res["int8"].mask_iou if "int8" in res else None})
    if "tensorrt" in res:
        metrics.update({"trt_map": res["tensorrt"].map, "trt_map_drop": res["tensorrt"].drop,
                        "trt_ms": ms("tensorrt"), "trt_ms_b8": ms("tensorrt", 8)})
    if ex.format is ExportFormat.tensorrt:
        metrics["tensorrt"] = "skipped" if skipped else "built"
    return metrics


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 2) if a and b else None


def _recipe_args(ctx: StageContext) -> List[str]:
    """The command-line choices that reproduce this run (recipe + overrides)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        args = [f"recipe={hc.runtime.choices.get('recipe')}"] if hc.runtime.choices.get("recipe") else []
        return args + [o for o in hc.overrides.task if not o.startswith(("stages=", "recipe="))]
    except Exception:
        ex = ctx.config.export
        return [f"project={ctx.config.project}", f"export=tensorrt_{'int8' if ex.tensorrt.int8 else 'fp16'}"]


def _write_latency(work: Path, rows: List[Dict[str, Any]], maps: Dict[str, Optional[float]],
                   results: Dict[str, GateResult]) -> None:
    segm = any(r.segm_map is not None for r in results.values())  # mask models: the masks' mAP too
    torch_segm = next((r.torch_segm_map for r in results.values() if r.torch_segm_map is not None), None)
    head = "| runtime | batch | median ms | p90 ms | ms / image | mAP | mAP drop (points) |"
    md = [head + (" mask mAP | mask mAP drop |" if segm else "") + " gate |",
          "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if segm else "") + "---|"]
    csv = ["runtime,batch,median_ms,p90_ms,per_image_ms,mAP,map_drop" + (",segm_mAP,segm_map_drop" if segm else "")
           + ",gate"]
    fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        res = results.get(r["runtime"])
        m = maps.get(r["runtime"])
        drop = res.drop if res else None
        g = "" if not res else ("pass" if res.passed else "FAIL")
        sm = res.segm_map if res else (torch_segm if r["runtime"] == "pytorch" else None)
        sd = res.segm_drop if res else None
        md.append(f"| {r['runtime']} | {r['batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['per_image_ms']:.1f} | "
                  f"{fmt(m, '.4f')} | {fmt(drop, '.2f')} |" + (f" {fmt(sm, '.4f')} | {fmt(sd, '.2f')} |" if segm else "")
                  + f" {g} |")
        csv.append(f"{r['runtime']},{r['batch']},{r['median_ms']},{r['p90_ms']},{r['per_image_ms']},"
                   f"{fmt(m, '')},{fmt(drop, '')}" + (f",{fmt(sm, '')},{fmt(sd, '')}" if segm else "") + f",{g}")
    ious = {k: v.mask_iou for k, v in results.items() if v.mask_iou is not None}
    if ious:  # mask models: how equal the masks are, instance by instance
        md += ["", "Per-instance mask IoU against PyTorch (instances matched by box):", "",
               "| runtime | instances | median | limit (median) | 5th percentile | worst | worst image |",
               "|---|---:|---:|---:|---:|---:|---|"]
        md += [f"| {k} | {m['instances']} | {m['median']:.4f} | {results[k].min_mask_iou:.2f} | {m['p5']:.4f} | "
               f"{m['worst']:.4f} | {Path(m['worst_file']).name} |" for k, m in ious.items()]
    (work / "latency.md").write_text("\n".join(md) + "\n")
    (work / "latency.csv").write_text("\n".join(csv) + "\n")
