"""The monitor stage: is production still the data the model was trained for?

1. **Reference** (cached per exported model): records of the curated val + test
   images under the exported model (:func:`cvops.drift.profile.reference`).
2. **Window**: the newest ``monitor.window`` images of ``monitor.source``: the
   serve request log (default), a folder of images, a video file or folder of
   videos (``monitor.fps``), or ``synthetic``: new videos from ``data.synthetic``
   (seed ``monitor.seed``) with ``monitor.shift`` applied (darker, blurred,
   noisy or an unseen background), the quickstart's stand-in for production.
3. **Drift**: per feature KS + PSI (image brightness, contrast, sharpness,
   saturation, size; boxes per image, max/mean score, empty rate, box sizes;
   for a mask model also mask area / image and mask area / box per object),
   chi-square on the class mix, MMD on the embeddings, Bonferroni-corrected
   (:func:`cvops.drift.stats.compare`). Degradation proxies without labels:
   mean max score, empty-prediction rate, boxes per image (window vs reference).
4. **Edge cases** (:func:`cvops.drift.profile.edge_reasons`, chosen by
   :func:`cvops.drift.profile.select_edge_cases` against the reference images' own reasons, so an
   in-distribution window stays quiet and what the window shows more than the reference surfaces) go to the FiftyOne
   review dataset ``<project>-review`` with the predictions as ``prelabels``
   (with their instance masks when the window ran through a mask model);
   ``cvops review recipe=X`` turns reviewed ones into the next curate version.
5. **Report**: ``report.html`` (verdicts + plots), ``drift.json``, W&B, and
   ``run.json`` metrics ``drift_detected, drift_features, edge_cases,
   window_images`` and more. ``monitor.on_drift`` starts ``cvops recipe=<it>``.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cvops.errors import StageError
from cvops.drift.stats import DriftReport, Profile, compare
from cvops.media import IMAGE_EXTS, VIDEO_EXTS
from cvops.requestlog import request_log_dir, utc_now
from cvops.drift.profile import (Seen, edge_reasons, held_out, iter_folder, iter_videos, profile_of, reference,
                                   run_images, select_edge_cases, window_from_log)
from cvops.monitor.checks import check
from cvops.annotate.review import review_dataset
from cvops.stages import StageContext, StageResult

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
DEGRADATION = ("max_score", "empty", "num_boxes")
MIN_WINDOW = 20


class MonitorError(StageError):
    """A monitor input the user has to fix (the message says how)."""


def load_window(ctx: StageContext, detector: Any, low: float) -> tuple[List[Seen], str, Dict[str, Any]]:
    """The production window as records; also a description of the source and notes."""
    mon = ctx.config.monitor
    src, window = mon.source, mon.window
    notes: Dict[str, Any] = {}
    if src is None:
        d = request_log_dir(ctx.config.serve.log_dir, ctx.store.root, ctx.config.project)
        if not d.exists():
            raise MonitorError(
                f"monitor.source is not set and there is no request log at {d}: serve the model first "
                f"(cvops serve recipe=...) or point monitor.source at a folder of images or a video")
        fp = ctx.inputs["export"].fingerprint
        seen, skipped = window_from_log(d, window, low, model=fp)
        notes["unreadable_log_lines"] = skipped
        if not seen:
            raise MonitorError(f"the request log {d} has no successful requests answered by this export ({fp}) "
                               f"yet: serve it (cvops serve recipe=...) and send traffic, or set monitor.source")
        return seen, f"request log {d}", notes
    if src == "synthetic":
        from cvops.synthetic import Shift, generate, spec_from_config

        sh = mon.shift
        shift = Shift(brightness=sh.brightness, blur=sh.blur, noise=sh.noise, background=sh.background)
        synthetic = ctx.config.data.synthetic
        spec = spec_from_config(synthetic, shift)
        spec.seed = synthetic.seed + 1000 + mon.seed
        spec.num_images, spec.videos = window, 0  # fresh independent draws of the training generator
        out = ctx.workdir / "window"
        generate(out, spec, progress=False)
        desc = f"synthetic window: {window} new generated images (seed {spec.seed}), shift " + (
            "none" if shift.is_identity() else ", ".join(f"{k}={v}" for k, v in vars(shift).items() if v not in (None, 0.0, 1.0)))
        return run_images(detector, iter_folder(out / "images", window), low, desc="monitor: window"), desc, notes
    path = Path(src).expanduser()
    if not path.exists():
        raise MonitorError(f"monitor.source={src}: no such file or folder")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        raise MonitorError(f"monitor.source={src} is one image; a window needs many: put the images in a folder "
                           "and point monitor.source at it")
    if path.is_file() and path.suffix.lower() in VIDEO_EXTS:
        return run_images(detector, iter_videos([path], mon.fps, window), low, keep_frames=True,
                          desc="monitor: window"), f"video {path}", notes
    if path.is_dir():
        vids = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
        imgs = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS]
        if imgs:
            return run_images(detector, iter_folder(path, window), low, desc="monitor: window"), f"folder {path}", notes
        if vids:
            return run_images(detector, iter_videos(vids, mon.fps, window), low, keep_frames=True,
                              desc="monitor: window"), f"videos in {path}", notes
    raise MonitorError(f"monitor.source={src}: neither a video ({', '.join(sorted(VIDEO_EXTS))}) nor a folder "
                       f"with images ({', '.join(sorted(IMAGE_EXTS))}) or videos")


def to_review(dataset: str, edge: List[tuple], classes: Sequence[str], work: Path, fingerprint: str,
              source: str, store_id: str = "", served_model: str = "") -> int:
    """Add edge cases (Seen, reasons) to the persistent FiftyOne review dataset; returns how many are new there.

    Images already in the dataset (same file) are not added twice; requests whose image was not
    sampled by the server have no file and are counted in the metrics only.

    The ``prelabels`` of a mask model's edge case carry each instance mask (FiftyOne ``Detection.mask``
    with its box in whole pixels, :func:`cvops.masks.fiftyone_mask`) when the window has the masks:
    folders, videos and synthetic windows, which run the model here (:attr:`Seen.masks`, or
    ``Seen.dets.masks``). Edge cases from the serve request log get boxes only: the log keeps each
    mask's pixel count, not the mask.
    """
    import cv2

    from cvops import masks as rle
    from cvops.fo import connect

    fo = connect()
    frames = work / "edge_cases"
    frames.mkdir(exist_ok=True)
    samples = []
    for k, (s, reasons) in enumerate(edge):
        path = s.path
        if path is None and s.frame is not None:
            path = str(frames / f"{k:05d}.jpg")
            if isinstance(s.frame, (bytes, bytearray)):
                Path(path).write_bytes(s.frame)
            else:
                cv2.imwrite(path, s.frame)
        if path is None:
            continue  # a request whose image was not sampled: counted, not reviewable
        h, w = int(s.record.get("height", 1)), int(s.record.get("width", 1))
        dets = []
        if s.dets is not None:
            instance = s.masks
            if instance is None and s.dets.masks is not None:
                instance = [s.dets.masks.rle(k) for k in range(len(s.dets.masks))]
            for i, (b, sc, lab) in enumerate(zip(s.dets.boxes, s.dets.scores, s.dets.labels)):
                label = classes[int(lab)] if int(lab) < len(classes) else str(int(lab))
                if instance is not None and i < len(instance):
                    box, mask = rle.fiftyone_mask(instance[i], [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                                                float(b[3] - b[1])])
                    dets.append(fo.Detection(label=label, confidence=float(sc), bounding_box=box, mask=mask))
                    continue
                dets.append(fo.Detection(label=label, confidence=float(sc),
                                         bounding_box=[float(b[0]) / w, float(b[1]) / h, float(b[2] - b[0]) / w,
                                                       float(b[3] - b[1]) / h]))
        sample = fo.Sample(filepath=str(Path(path).resolve()), tags=["needs_review", *reasons])
        sample["prelabels"] = fo.Detections(detections=dets)
        sample["edge_reasons"] = list(reasons)
        sample["monitor_fingerprint"] = fingerprint
        sample["window_source"] = source
        sample["window_item"] = s.name
        sample["max_score"] = float(s.record.get("max_score", 0.0))
        # whose answer the prelabels are, when, and for which source: reviewed accuracy over time
        sample["served_model"] = str(s.record.get("model") or served_model)
        sample["served_at"] = str(s.record.get("time") or utc_now())
        sample["source"] = str(s.record.get("source") or "default")
        samples.append(sample)
    new = []
    from cvops.fo import edit_dataset

    with edit_dataset(dataset, create=True) as ds:  # another run's monitor may add to it at the same time
        if "ground_truth" not in ds.get_field_schema():
            ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        ds.default_classes = list(classes)
        if store_id and not ds.info.get("cvops_store"):
            ds.info = {**ds.info, "cvops_store": store_id}
            ds.save()
        if samples:
            known = set(ds.distinct("filepath")) if len(ds) else set()
            new = [x for x in samples if x.filepath not in known]
            if new:
                ds.add_samples(new, progress=False)
    return len(new)


def _plots(work: Path, ref: Profile, win: Profile, report: DriftReport) -> Dict[str, str]:
    from matplotlib.figure import Figure

    out: Dict[str, str] = {}
    names = [f.name for f in report.features if f.test in ("ks", "ks+psi") and f.name in ref.features]
    names = names or [k for k in ref.features if k in win.features]
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
    drifted = set(report.drift_features)
    for i, n in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        a, b = np.asarray(ref.features[n], float), np.asarray(win.features[n], float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        if a.size and b.size:
            lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 25)
            ax.hist(a, bins=bins, density=True, alpha=0.5, label="reference")
            ax.hist(b, bins=bins, density=True, alpha=0.5, label="window")
        ax.set_title(f"{n}{'  DRIFT' if n in drifted else ''}", fontsize=9, color="red" if n in drifted else "black")
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(work / "features.png", dpi=90)
    out["features_plot"] = "features.png"
    if ref.embeddings is not None and win.embeddings is not None:
        both = np.vstack([ref.embeddings, win.embeddings]).astype(np.float64)
        mu, sd = both.mean(0), both.std(0) + 1e-9
        z = (both - mu) / sd
        _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        p = z @ vt[:2].T
        fig = Figure(figsize=(4.5, 4))
        ax = fig.add_subplot()
        n = len(ref.embeddings)
        ax.scatter(p[:n, 0], p[:n, 1], s=8, alpha=0.6, label="reference")
        ax.scatter(p[n:, 0], p[n:, 1], s=8, alpha=0.6, label="window")
        ax.set_title("embeddings (PCA of pooled model features)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(work / "embeddings.png", dpi=90)
        out["embeddings_plot"] = "embeddings.png"
    return out


def _html(work: Path, title: str, metrics: Dict[str, Any], report: DriftReport, plots: Dict[str, str]) -> None:
    import html

    rows = []
    for f in report.features:
        p = "" if f.p_value is None else f"{f.p_value:.3g}"
        pa = "" if getattr(f, "p_adjusted", None) is None else f"{f.p_adjusted:.3g}"
        psi = "" if f.psi is None or not np.isfinite(f.psi) else f"{f.psi:.3f}"
        rm = "" if f.ref_mean is None else f"{f.ref_mean:.4g}"
        cm = "" if f.cur_mean is None else f"{f.cur_mean:.4g}"
        style = ' style="background:#fdd"' if f.drifted else ""
        rows.append(f"<tr{style}><td>{html.escape(f.name)}</td><td>{f.test}</td><td>{p}</td><td>{pa}</td><td>{psi}</td>"
                    f"<td>{rm}</td><td>{cm}</td><td>{'DRIFT' if f.drifted else 'ok'}</td></tr>")
    imgs = "".join(f'<p><img src="data:image/png;base64,{base64.b64encode((work / p).read_bytes()).decode()}"></p>'
                   for p in plots.values())
    verdict = "DRIFT DETECTED" if metrics["drift_detected"] else "no drift"
    deg = "".join(f"<li>{html.escape(k)}: reference {v['reference']:.3f}, window {v['window']:.3f}</li>"
                  for k, v in metrics["degradation"].items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2 style="color:{'#c00' if metrics['drift_detected'] else '#070'}">{verdict}</h2>
<p>window: {metrics['window_images']} images from {html.escape(metrics['window_source'])};
reference: {metrics['reference_images']} curated val/test images. Drifted: {', '.join(report.drift_features) or 'none'}.
Tests are Bonferroni-corrected over {report.num_tests} tests at p &lt; {report.p_value}; a numeric feature drifts when
its corrected KS p-value is below that <i>and</i> PSI &gt; {report.psi_threshold}.</p>
<h3>Degradation proxies (no labels needed)</h3><ul>{deg}{_precision_items(metrics.get("estimated_precision"))}</ul>
{_accuracy_table(metrics.get("reviewed_accuracy") or [])}
<h3>Edge cases</h3><p>{metrics['edge_cases']} image(s) sent to FiftyOne dataset <b>{html.escape(str(metrics['review_dataset']))}</b>
({', '.join(f'{k}: {v}' for k, v in metrics['edge_case_reasons'].items()) or 'none'}).
Review them with <code>cvops app --dataset {html.escape(str(metrics["review_dataset"]))}</code> (or <code>cvops app recipe=... --review</code>), tag the ones you
fixed <code>reviewed</code>, then <code>cvops review recipe=...</code>.</p>
<h3>Per-feature verdicts</h3>
<table><tr><th>feature</th><th>test</th><th>p</th><th>p corrected</th><th>PSI</th><th>reference mean</th><th>window mean</th><th>verdict</th></tr>
{''.join(rows)}</table>
{imgs}
</body></html>"""
    (work / "report.html").write_text(doc)


def _accuracy_table(rows: List[Dict[str, Any]]) -> str:
    import html

    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(r['week'])}</td><td>{html.escape(r['model'])}</td><td>{r['images']}</td>"
                   f"<td>{r['mAP50']:.3f}</td></tr>" for r in rows)
    return ("<h3>Reviewed accuracy over time</h3><p>The served answers of edge cases people reviewed, against their "
            "corrections (box mAP50; edge cases are where the model struggles, so lower than on random traffic)."
            f"</p><table><tr><th>week</th><th>model</th><th>images</th><th>mAP50</th></tr>{body}</table>")


def _precision_items(est: Optional[Dict[str, Any]]) -> str:
    if not est:
        return ""
    ref = est["reference"].get("all")
    win = est["window"].get("all")
    return (f"<li>estimated precision at confidence &ge; {est['confidence']:g}: window "
            f"{'n/a (no box)' if win is None else f'{win:.3f}'} on {est['boxes'].get('all', 0)} boxes, "
            f"{est['calibrated_on']} split {'n/a' if ref is None else f'{ref:.3f}'} (calibrated on the "
            f"{est['calibrated_on']} split at export; not to be trusted for content the model never saw)</li>")


def run(ctx: StageContext) -> StageResult:
    """Drift of a production window against the model's reference profile; edge cases to FiftyOne review."""
    from cvops.detector.runtime import OnnxDetector

    mon = ctx.config.monitor
    curate, export = ctx.inputs["curate"], ctx.inputs["export"]
    work = ctx.workdir
    check(mon)  # the preflight checked it already; a direct call of run() too
    low = mon.low_confidence
    onnx_path = export.path("onnx")
    ref, ref_seen, ref_dir = reference(ctx.store, export.fingerprint, onnx_path,
                                       held_out(curate), low, timeout=ctx.config.lock_timeout_s)
    detector = OnnxDetector(onnx_path)
    seen, source, notes = load_window(ctx, detector, low)
    if not seen:
        raise MonitorError(f"the window from {source} is empty: no image or frame could be decoded")
    if len(seen) < MIN_WINDOW:
        log.warning("  monitor: only %d images in the window (%s): too few for the drift tests to say much",
                    len(seen), source)
        notes["warning"] = f"only {len(seen)} images in the window (fewer than {MIN_WINDOW}): little statistical power"
    win = profile_of(seen)
    report = compare(ref, win, p_value=mon.p_value, psi_threshold=mon.psi_threshold,
                     permutations=mon.mmd_permutations, seed=mon.seed)
    rules = (low, mon.near_threshold, mon.overlap_iou, mon.embedding_quantile)
    reasons = edge_reasons(seen, ref.embeddings, *rules, ref_seen=ref_seen)
    ref_reasons = edge_reasons(ref_seen, ref.embeddings, *rules, reference=True, ref_seen=ref_seen)
    picked, calibration = select_edge_cases(reasons, ref_reasons, float(mon.edge_rate),
                                            [float(s.record.get("max_score", 0.0)) for s in seen],
                                            int(mon.max_edge_cases))
    edge = [(seen[i], reasons[i]) for i in picked]
    counts: Dict[str, int] = {}
    for _, r in edge:
        for x in r:
            counts[x] = counts.get(x, 0) + 1
    review = review_dataset(str(ctx.config.project), ctx.store_id, mon.review_dataset)
    classes = list(curate.metrics["classes"])
    added = to_review(review, edge, classes, work, ctx.fingerprint, source, ctx.store_id, export.fingerprint)
    accuracy = _reviewed_accuracy(ctx, review, classes)

    def mean(p: Profile, k: str) -> float:
        v = np.asarray(p.features.get(k, []), float)
        return float(v[np.isfinite(v)].mean()) if v.size else float("nan")

    metrics: Dict[str, Any] = {
        "drift_detected": bool(report.drift_detected),
        "drift_features": list(report.drift_features),
        "edge_cases": len(edge),
        "edge_cases_in_review": added,
        "edge_case_reasons": counts,
        "edge_calibration": calibration,
        "reviewed_accuracy": accuracy,
        "window_images": len(seen),
        "window_source": source,
        "reference_images": len(ref_seen),
        "review_dataset": review,
        "degradation": {k: {"reference": mean(ref, k), "window": mean(win, k)} for k in DEGRADATION},
        "p_values": {f.name: f.p_value for f in report.features if f.p_value is not None},
        "estimated_precision": estimated_precision(export, seen, list(detector.classes)),
        **notes,
    }
    (work / "drift.json").write_text(json.dumps({"report": report.to_dict(), "metrics": metrics}, indent=1, default=str))
    plots = _plots(work, ref, win, report)
    _html(work, f"cvops monitor · {ctx.config.project}", metrics, report, plots)
    _track(ctx, metrics, report)
    if report.drift_detected and mon.on_drift:
        metrics["retrain"] = _retrain(ctx, mon.on_drift)
    log.info("  monitor: %s on %d images (%s): %s; %d edge case(s) -> FiftyOne %s; report %s",
             "DRIFT" if report.drift_detected else "no drift", len(seen), source,
             ", ".join(report.drift_features) or "nothing drifted", len(edge), review, ctx.run_dir / "monitor" / "report.html")
    metrics["reference_dir"] = str(ref_dir)
    return StageResult({"report": "report.html", "drift": "drift.json", **plots}, metrics,
                       reports=["report.html", "drift.json", *plots.values()])


def _reviewed_accuracy(ctx: StageContext, review: str, classes: List[str]) -> List[Dict[str, Any]]:
    """The served answers people reviewed, scored per model and week; left beside the request log for
    ``cvops serve``'s ``cvops_reviewed_map50`` (:mod:`cvops.annotate.accuracy`)."""
    from cvops.annotate import accuracy

    try:
        rows = accuracy.reviewed_accuracy(review, classes)
        log_dir = request_log_dir(ctx.config.serve.log_dir, ctx.store.root, ctx.config.project)
        if rows and Path(log_dir).is_dir():
            accuracy.write(Path(log_dir), rows)
        return rows
    except Exception as e:  # a figure, never the monitor's failure
        log.warning("  monitor: reviewed accuracy not computed: %s: %s", type(e).__name__, e)
        return []


def estimated_precision(export: Any, seen: Sequence[Any], classes: List[str]) -> Optional[Dict[str, Any]]:
    """The label-free precision estimate of the window's detections (:mod:`cvops.detector.calibration`), beside
    the validation split's; None for an export without a calibration (exported before cvops had one)."""
    if "precision_calibration" not in export.manifest.get("artifacts", {}):
        return None
    from cvops.detector.calibration import Calibration

    cal = Calibration.read(export.path("precision_calibration"))
    dets = [{"class": classes[int(lab)] if 0 <= int(lab) < len(classes) else str(int(lab)), "score": float(sc)}
            for s in seen if s.dets is not None for sc, lab in zip(s.dets.scores, s.dets.labels)]
    est = cal.estimate(dets)
    return {"window": {k: round(v["precision"], 4) for k, v in est.items()},
            "boxes": {k: v["boxes"] for k, v in est.items()},
            "reference": cal.reference, "confidence": cal.confidence, "calibrated_on": cal.data.get("split")}


def _track(ctx: StageContext, metrics: Dict[str, Any], report: DriftReport) -> None:
    try:
        tracker = ctx.tracker
        tracker.log({"monitor/drift_detected": int(metrics["drift_detected"]), "monitor/edge_cases": metrics["edge_cases"],
                     "monitor/window_images": metrics["window_images"],
                     **{f"monitor/p/{k}": v for k, v in metrics["p_values"].items()}})
        tracker.summary({"drift_detected": metrics["drift_detected"], "drift_features": ",".join(metrics["drift_features"])})
    except Exception as e:  # tracking must not hide the verdict
        log.warning("  monitor: tracker failed: %s", e)


def _retrain(ctx: StageContext, recipe: str) -> Dict[str, Any]:
    """Start ``cvops recipe=<recipe>``, or with ``loop`` one tick of this recipe's loop (``cvops loop`` with this
    run's overrides), in the background (monitor.on_drift)."""
    logf = ctx.run_dir / "monitor" / f"on_drift_{recipe}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    # same store (its curate/train artifacts are reused where the retrain recipe agrees with them)
    if recipe == "loop":
        cmd = [sys.executable, "-m", "cvops", "loop", *_this_run(), f"paths.store={ctx.store}"]
    else:
        cmd = [sys.executable, "-m", "cvops", f"recipe={recipe}", f"paths.store={ctx.store}"]  # a folder (absolute) or s3://...
    with open(logf, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(Path.cwd()))
    log.info("  monitor: drift -> started cvops %s (pid %d, log %s)", " ".join(cmd[3:]), proc.pid, logf)
    return {"recipe": recipe, "command": "cvops " + " ".join(cmd[3:]), "pid": proc.pid, "log": str(logf)}


def _this_run() -> List[str]:
    """This run's command-line overrides (Hydra's), less ``stages=`` and ``paths.store=`` (given absolute)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task if not str(o).startswith(("stages=", "paths.store="))]
