"""The evaluate stage: COCO mAP on val and test, predictions into FiftyOne.

One metric contract: cvops' mAP *is* pycocotools' COCOeval (IoU 0.50:0.95,
101-point interpolated precision, maxDets 100, area "all") on the exported
predictions; the same predictions are written to the project's FiftyOne
dataset and scored there with ``evaluate_detections(method="coco",
compute_mAP=True)``, and both numbers are recorded (``fiftyone_mAP``,
``contract_abs_diff``) so any disagreement is visible, not hidden. An
instance-segmentation model is scored on its masks the same way (``segm_mAP``
from COCOeval "segm", ``fiftyone_segm_mAP`` from ``use_masks=True``,
``segm_contract_abs_diff``), beside its box mAP.

Artifacts: ``predictions_<split>.json`` (COCO results format), ``per_class_ap.csv``
and ``.md``, ``pr_curves.png`` (IoU 0.5), ``confusion_matrix.png`` (from
FiftyOne's matching), also copied into the run dir's ``evaluate/``.
In the App, the predictions field ``pred_<model>_<train fp>`` and the evaluation
``eval_<model>_<train fp>`` show TP/FP/FN per box.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from cvops.detector.coco import coco_eval
from cvops.detector.mmdet import predict
from cvops.schema import Device
from cvops.stages import StageContext, StageResult

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)


def _to_fiftyone(dataset: str, field: str, key: str, exports: Dict[str, Path], preds: Dict[str, List[Dict[str, Any]]],
                 classes: List[str], segm: bool = False) -> Tuple[float, Any, Optional[float]]:
    """Write predictions as ``field`` and run FiftyOne's COCO evaluation on the test split: box mAP, its
    results, and (predictions with masks) mask mAP (``use_masks``, evaluation ``<key>_segm``)."""
    from cvops import masks
    from cvops.fo import connect, edit_dataset

    fo = connect()
    names = {}
    by_path: Dict[str, Any] = {}
    for split, dets in preds.items():
        gt = json.loads(exports[split].read_text())
        names = {c["id"]: c["name"] for c in gt["categories"]}
        images = {im["id"]: im for im in gt["images"]}
        per_image: Dict[int, list] = {i: [] for i in images}
        for d in dets:
            per_image[d["image_id"]].append(d)
        for image_id, ds_ in per_image.items():
            im = images[image_id]
            w, h = im["width"], im["height"]
            dets = []
            for d in ds_:
                if segm and "segmentation" in d:  # the box of a FiftyOne mask is whole pixels (masks.fiftyone_mask)
                    box, mask = masks.fiftyone_mask(d["segmentation"], d["bbox"])
                    dets.append(fo.Detection(label=names[d["category_id"]], confidence=d["score"], bounding_box=box,
                                             mask=mask))
                else:
                    dets.append(fo.Detection(label=names[d["category_id"]], confidence=d["score"], bounding_box=[
                        d["bbox"][0] / w, d["bbox"][1] / h, d["bbox"][2] / w, d["bbox"][3] / h]))
            by_path[im["file_name"]] = fo.Detections(detections=dets)
    test_files = [im["file_name"] for im in json.loads(exports["test"].read_text())["images"]]
    with edit_dataset(dataset, "the curate stage") as ds:  # other runs may write into it at the same time
        view = ds.select_by("filepath", list(by_path))
        view.set_values(field, by_path, key_field="filepath")
        if key in ds.list_evaluations():
            ds.delete_evaluation(key)
        test = ds.select_by("filepath", test_files)
        results = test.evaluate_detections(field, gt_field="ground_truth", eval_key=key, method="coco",
                                           compute_mAP=True, classes=classes, progress=False)
        segm_map = None
        if segm:
            if f"{key}_segm" in ds.list_evaluations():
                ds.delete_evaluation(f"{key}_segm")
            segm_map = float(test.evaluate_detections(field, gt_field="ground_truth", eval_key=f"{key}_segm",
                                                      method="coco", use_masks=True, compute_mAP=True,
                                                      classes=classes, progress=False).mAP())
    return float(results.mAP()), results, segm_map


def app_view_name(field: str, thr: float) -> str:
    return f"{field} confidence >= {thr:g}"


def save_app_view(dataset: str, field: str, thr: float) -> str:
    """A saved view of the dataset showing only ``field``'s predictions scored >= ``thr`` (the confusion
    matrix's threshold), which ``cvops app`` opens; the full set (down to ``evaluate.score_thr``, which mAP
    needs) stays one click away as the dataset itself."""
    from fiftyone import ViewField as F

    from cvops.fo import edit_dataset

    name = app_view_name(field, thr)
    with edit_dataset(dataset, "the curate stage") as ds:
        view = ds.filter_labels(field, F("confidence") >= thr, only_matches=False)
        ds.save_view(name, view, description=f"{field}: predictions with confidence >= {thr:g} "
                     "(the evaluate stage's confusion_score_thr); the dataset itself has all of them", overwrite=True)
    return name


def run(ctx: StageContext) -> StageResult:
    """COCO mAP of the trained checkpoint on each of ``evaluate.splits``, predictions into FiftyOne."""
    import torch

    ev = ctx.config.evaluate
    curate, train = ctx.inputs["curate"], ctx.inputs["train"]
    work = ctx.workdir
    classes = list(curate.metrics["classes"])
    exports = {s: curate.path(f"coco_{s}") for s in ("train", "val", "test")}
    from cvops.fo import load_dataset

    load_dataset(curate.metrics["dataset_name"], f"curate artifact {curate.fingerprint[:12]}", curate.dir)  # before any work
    device = "cuda:0" if torch.cuda.is_available() and ctx.config.train.device is not Device.cpu else "cpu"
    preds, stats, evals = {}, {}, {}
    segm = bool(train.metrics.get("masks"))
    for split in ev.splits:
        if split not in exports:
            raise ValueError(f"evaluate.splits: no '{split}' split; curated splits are {list(exports)}")
        preds[split] = predict(train.path("config"), train.path("checkpoint"), exports[split], device,
                               ev.score_thr, ev.max_det)
        (work / f"predictions_{split}.json").write_text(json.dumps(preds[split]))
        stats[split], evals[split] = coco_eval(exports[split], preds[split])
        if segm:  # an instance-segmentation model: mask mAP too
            stats[split]["segm"] = coco_eval(exports[split], preds[split], "segm")[0]
    # named by this evaluation (its fingerprint covers the model and evaluate's settings): two evaluations of
    # one model with other score_thr/max_det keep their own predictions in the shared dataset
    model_tag = re.sub(r"[^A-Za-z0-9_]", "_", f"{ctx.config.model.name}_{ctx.fingerprint[:8]}")
    field, key = f"pred_{model_tag}", f"eval_{model_tag}"
    test = stats.get("test", {})
    metrics: Dict[str, Any] = {
        "mAP": test.get("mAP"), "mAP50": test.get("mAP50"), "mAP75": test.get("mAP75"),
        "per_class_AP": test.get("per_class_AP"),
        "val_mAP": stats.get("val", {}).get("mAP"), "val_mAP50": stats.get("val", {}).get("mAP50"),
        "predictions_field": field, "eval_key": key,
    }
    if "segm" in test:
        segm = test["segm"]
        metrics.update(segm_mAP=segm["mAP"], segm_mAP50=segm["mAP50"], segm_mAP75=segm["mAP75"],
                       segm_per_class_AP=segm["per_class_AP"],
                       val_segm_mAP=stats.get("val", {}).get("segm", {}).get("mAP"))
    artifacts = {f"predictions_{s}": f"predictions_{s}.json" for s in preds}
    if "test" in preds:
        fo_map, results, fo_segm = _to_fiftyone(curate.metrics["dataset_name"], field, key, exports, preds, classes,
                                                segm)
        metrics["fiftyone_mAP"] = fo_map
        metrics["contract_abs_diff"] = abs(fo_map - (test["mAP"] or 0.0))
        if fo_segm is not None:
            metrics["fiftyone_segm_mAP"] = fo_segm
            metrics["segm_contract_abs_diff"] = abs(fo_segm - (metrics.get("segm_mAP") or 0.0))
        metrics["app_view"] = save_app_view(curate.metrics["dataset_name"], field, ev.confusion_score_thr)
        if ev.plots:
            artifacts.update(_plots(work, classes, evals["test"], results, test["per_class_AP"],
                                    ev.confusion_score_thr))
    log.info("  evaluate: test mAP %.4f (mAP50 %.4f), val mAP %.4f; FiftyOne mAP %.4f; field %s",
             metrics["mAP"] or 0, metrics["mAP50"] or 0, metrics["val_mAP"] or 0, metrics.get("fiftyone_mAP") or 0,
             field)
    if "segm_mAP" in metrics:
        log.info("  evaluate: test mask mAP %.4f (mAP50 %.4f); FiftyOne mask mAP %.4f", metrics["segm_mAP"] or 0,
                 metrics["segm_mAP50"] or 0, metrics.get("fiftyone_segm_mAP") or 0)
    return StageResult(artifacts, metrics, reports=[r for r in artifacts.values() if not r.startswith("predictions_")])


def _confusion(results: Any, classes: List[str], conf_thr: float) -> np.ndarray:
    """Confusion matrix of FiftyOne's COCO matching, counting predictions >= conf_thr.

    A matched pair whose prediction is below the threshold counts as a missed
    ground truth; an unmatched prediction below it is not counted at all, so
    the (none) row shows the false positives a user would actually see.
    """
    idx = {c: i for i, c in enumerate(classes)}
    none = len(classes)
    cm = np.zeros((none + 1, none + 1), dtype=int)
    for t, p, c in zip(results.ytrue, results.ypred, results.confs):
        ti = idx.get(t, none) if t != results.missing else none
        pi = idx.get(p, none) if p != results.missing else none
        if pi != none and (c is None or c < conf_thr):
            if ti == none:
                continue
            pi = none
        cm[ti, pi] += 1
    return cm


def _plots(work: Path, classes: List[str], ev: Any, results: Any, per_class: Dict[str, Any],
           conf_thr: float = 0.3) -> Dict[str, str]:
    from matplotlib.figure import Figure

    rows = ["| class | AP | AP50 |", "|---|---:|---:|"]
    csv_rows = ["class,AP,AP50"]
    recall = ev.params.recThrs
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    for k, cat in enumerate(ev.params.catIds):
        name = ev.cocoGt.cats[cat]["name"]
        p50 = ev.eval["precision"][0, :, k, 0, -1]
        ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else None
        ap = per_class.get(name)
        rows.append(f"| {name} | {ap if ap is None else f'{ap:.4f}'} | {ap50 if ap50 is None else f'{ap50:.4f}'} |")
        csv_rows.append(f"{name},{'' if ap is None else ap},{'' if ap50 is None else ap50}")
        if ap50 is not None:
            ax.plot(recall, np.clip(p50, 0, 1), label=f"{name} (AP50 {ap50:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("PR curves, IoU 0.5 (test)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(work / "pr_curves.png", dpi=100)
    (work / "per_class_ap.md").write_text("\n".join(rows) + "\n")
    (work / "per_class_ap.csv").write_text("\n".join(csv_rows) + "\n")
    labels = classes + ["(none)"]  # unmatched boxes: FN in the last column, FP in the last row
    cm = _confusion(results, classes, conf_thr)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    ax.set_title(f"confusion matrix (test, score >= {conf_thr:g})")
    fig.tight_layout()
    fig.savefig(work / "confusion_matrix.png", dpi=100)
    return {"per_class_ap": "per_class_ap.md", "per_class_ap_csv": "per_class_ap.csv", "pr_curves": "pr_curves.png",
            "confusion_matrix": "confusion_matrix.png"}
