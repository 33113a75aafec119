"""Per-image records, the reference profile, production windows and edge cases.

A *record* describes one image the model saw: image statistics
(:func:`cvops.drift.stats.image_stats`), prediction statistics
(:func:`cvops.drift.stats.prediction_stats` at ``monitor.low_confidence``) and
the model's pooled embedding (the exported graph's ``embedding`` output). The
serve request log stores exactly these; folders, videos and generated windows
are turned into them by running the exported model.

For a model that predicts instance masks the records also pool, per kept
detection, ``mask_area_frac`` (mask pixels / image pixels) and ``mask_fill``
(mask pixels / box pixels). Both come from each mask's pixel count alone, which
the request log keeps as ``mask_area`` (it keeps no masks), so a window read
from the log and one (or the reference) run through the model compute them
the same way. Box-only models' records have neither.

The *reference profile* is the records of the curated val and test images
(never trained on) under the exported model. It depends only on the curated
data, the exported model, ``monitor.low_confidence`` and the code that computes
it, so it is built once per export and kept as an artifact of the store
(``<store>/reference/<fingerprint>/``, manifest written last, shared by every
machine of an ``s3://`` store), keyed like a stage (:mod:`cvops.fingerprint`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from cvops.detector.runtime import Detections, OnnxDetector, box_iou
from cvops.drift.stats import Profile, image_stats, prediction_stats
from cvops.fingerprint import digest, files_version
from cvops.masks import RLE
from cvops.store import Artifact, Builder, Store

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)
from cvops.media import IMAGE_EXTS


@dataclass
class Seen:
    """One image of a window: where it is (if kept), its record and its detections.

    A window run through a mask model keeps each detection's mask as a whole-image compressed RLE in
    ``masks`` (same order as ``dets``), not as arrays in ``dets.masks``: a window of hundreds of images
    with up to ``max_det`` full-size masks each would not fit in memory. Windows from the request log
    have no masks (the log keeps only each mask's pixel count).
    """

    name: str  # file path, "video.mp4#frame", or request id
    record: Dict[str, Any]
    dets: Optional[Detections] = None
    path: Optional[str] = None  # an image file FiftyOne can show (None: not kept, e.g. unsampled request)
    frame: Optional[bytes] = field(default=None, repr=False)  # JPEG of a decoded frame, written if it is an edge case
    masks: Optional[List[RLE]] = field(default=None, repr=False)  # instance masks of ``dets`` (mask models)


def mask_areas(dets: Detections) -> Optional[np.ndarray]:
    """Pixel count of each detection's mask in the original image (``None`` for a box-only model): what the
    request log stores as ``mask_area``."""
    if dets.masks is None:
        return None
    return dets.masks.areas()


def record_of(bgr: np.ndarray, dets: Detections, classes: Sequence[str], low: float) -> Dict[str, Any]:
    """The record of one image run through the model (image and prediction statistics, detections,
    embedding); with mask statistics when ``dets`` has masks."""
    h, w = bgr.shape[:2]
    names = [classes[int(i)] if int(i) < len(classes) else str(int(i)) for i in dets.labels]
    rec: Dict[str, Any] = {**image_stats(bgr), **prediction_stats(dets.scores, np.asarray(names, dtype=object),
                                                                  dets.boxes, w, h, low, mask_areas(dets))}
    rec["detections"] = dets.to_json(classes)
    if dets.embedding is not None:
        rec["embedding"] = [float(v) for v in dets.embedding]
    return rec


def _log_mask_areas(d: Sequence[Dict[str, Any]]) -> Optional[List[float]]:
    """The ``mask_area`` of every logged detection, or ``None`` when not all have a usable one (a box-only
    model, an image without detections, or a malformed line: then the record simply has no mask statistics)."""
    areas = [x.get("mask_area") for x in d]
    ok = [isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and a >= 0 for a in areas]
    return [float(a) for a in areas] if d and all(ok) else None


def record_from_log(r: Dict[str, Any], low: float) -> Tuple[Dict[str, Any], Detections]:
    """A request-log record completed with prediction statistics (the log keeps the raw detections).

    For a mask model each logged detection carries ``mask_area`` (its mask's pixel count; the log keeps
    no masks), which gives the same ``mask_area_frac`` and ``mask_fill`` as :func:`record_of` on the
    image's masks. An image without detections has no mask statistics here (nothing says the model
    predicts masks); its mask lists would be empty anyway, so the pooled profile is the same.
    """
    d = r.get("detections") or []
    dets = Detections(np.array([x["box"] for x in d], np.float32).reshape(-1, 4),
                      np.array([x["score"] for x in d], np.float32),
                      np.array([x.get("label", 0) for x in d], np.int64),
                      np.asarray(r["embedding"], np.float32) if r.get("embedding") else None)
    names = np.asarray([x.get("class", str(x.get("label"))) for x in d], dtype=object)
    rec = {**r, **prediction_stats(dets.scores, names, dets.boxes, int(r["width"]), int(r["height"]), low,
                                   _log_mask_areas(d))}
    return rec, dets


def profile_of(seen: Sequence[Seen]) -> Profile:
    """A drift profile (numeric features, class counts, embeddings) from a window's records."""
    keys = ("brightness", "contrast", "sharpness", "saturation", "width", "height", "aspect", "num_boxes",
            "max_score", "mean_score", "empty", "box_area_frac", "mask_area_frac", "mask_fill", "labels")
    recs = [{k: s.record[k] for k in keys if k in s.record} for s in seen]
    embs = [s.record.get("embedding") for s in seen]
    emb = np.asarray(embs, np.float32) if embs and all(e is not None for e in embs) else None
    return Profile.from_records(recs, embeddings=emb)


def run_images(detector: OnnxDetector, frames: Iterator[Tuple[str, Optional[str], np.ndarray]], low: float,
               keep_frames: bool = False, batch: int = 8, desc: str = "monitor") -> List[Seen]:
    """Run the exported model over (name, path, bgr) items; returns their records.

    With ``keep_frames``, items without a file (video frames) keep a JPEG of the frame, so
    edge cases can be shown later without holding decoded frames in memory. A mask model's
    masks are kept as RLE in :attr:`Seen.masks` (``dets.masks`` is dropped once the record has them).
    """
    import cv2
    from cvops.console import track

    out: List[Seen] = []
    chunk: List[Tuple[str, Optional[str], np.ndarray]] = []

    def flush() -> None:
        dets = detector.predict([c[2] for c in chunk])
        for (name, path, bgr), d in zip(chunk, dets):
            jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes() if keep_frames and path is None else None
            rec = record_of(bgr, d, detector.classes, low)
            rles = None
            if d.masks is not None:
                rles = [d.masks.rle(i) for i in range(len(d.masks))]
                d.masks = None
            out.append(Seen(name, rec, d, path, jpg, rles))
        chunk.clear()

    for item in track(frames, desc):
        chunk.append(item)
        if len(chunk) == batch:
            flush()
    if chunk:
        flush()
    return out


# ------------------------------------------------------------ reference
def held_out(curate: Any) -> List[Path]:
    """The curated val and test COCO files that exist (a recipe may have no test split)."""
    names = curate.manifest.get("artifacts", {})
    return [curate.path(f"coco_{s}") for s in ("val", "test") if f"coco_{s}" in names]


#: The store folder of reference profiles (``<store>/reference/<fingerprint>/``): an artifact kind beside the stages.
REFERENCE = "reference"
#: Libraries whose versions shape a reference profile (the model's outputs, the decoded pixels, the statistics).
REFERENCE_LIBRARIES = ("onnxruntime", "numpy", "scipy", "pillow", "opencv-python-headless", "opencv-python",
                       "opencv-contrib-python", "opencv-contrib-python-headless")


def reference_code() -> str:
    """The code version of a reference profile: the features and tests here, the detector's outputs and every
    cvops module they import, transitively (masks, media, ...), and the versions of the libraries that shape it."""
    here = Path(__file__).resolve().parent
    return files_version((here / "profile.py", here / "stats.py", here.parent / "detector" / "runtime.py"),
                         REFERENCE_LIBRARIES)


def reference_fingerprint(export_fp: str, low: float) -> str:
    """The store fingerprint of the reference profile of export ``export_fp`` at ``monitor.low_confidence=low``
    (the prediction statistics depend on it) under this code."""
    return digest(_reference_key(export_fp, low))


def _reference_key(export_fp: str, low: float) -> Dict[str, Any]:
    return {"stage": REFERENCE, "inputs": {"export": export_fp}, "config": {"low_confidence": float(low)},
            "code": reference_code()}


def reference(store: Store, export_fp: str, onnx_path: Path, coco_files: Sequence[Path], low: float,
              timeout: float = 3600.0) -> Tuple[Profile, List[Seen], Path]:
    """The reference profile of an exported model: built once (by one run, the others wait), then read from the
    store.

    Args:
        store: The artifact store (:func:`cvops.store.open_store`); the profile is its artifact
            ``reference/<fingerprint>`` (:func:`reference_fingerprint`).
        export_fp: The export's fingerprint.
        onnx_path: The exported model.
        coco_files: The curated held-out splits (:func:`held_out`).
        low: ``monitor.low_confidence``.
        timeout: Seconds to wait for another run building the same profile.

    Returns:
        (profile, its records, the artifact's local directory).

    Raises:
        ValueError: the held-out splits have no image.
        StoreError: waited ``timeout`` seconds for another run building it.
    """
    key = _reference_key(export_fp, low)
    fp = digest(key)
    art = store.get(REFERENCE, fp)
    if art is None:
        with store.build(REFERENCE, fp, timeout=timeout) as builder:
            art = store.get(REFERENCE, fp) if builder is None else _build_reference(builder, key, onnx_path,
                                                                                      coco_files, low)
    assert art is not None  # a build that yields None found it committed
    recs = [json.loads(line) for line in art.path("records").read_text().splitlines() if line.strip()]
    return (Profile.from_npz(art.path("profile")), [Seen(r["name"], r, _dets_of(r.pop("dets", None)), r["name"])
                                                    for r in recs], art.dir)


def _dets_json(d: Optional[Detections]) -> Optional[Dict[str, Any]]:
    if d is None:
        return None
    return {"boxes": np.round(d.boxes, 2).tolist(), "scores": np.round(d.scores, 5).tolist(),
            "labels": d.labels.astype(int).tolist()}


def _dets_of(d: Optional[Dict[str, Any]]) -> Optional[Detections]:
    if not d:
        return None
    return Detections(np.asarray(d["boxes"], np.float32).reshape(-1, 4), np.asarray(d["scores"], np.float32),
                      np.asarray(d["labels"], np.int64))


def _build_reference(builder: Builder, key: Dict[str, Any], onnx_path: Path, coco_files: Sequence[Path],
                     low: float) -> Artifact:
    import time

    import cv2

    images: List[str] = []
    for f in coco_files:
        images += [im["file_name"] for im in json.loads(Path(f).read_text())["images"]]
    if not images:
        raise ValueError("the curated val and test splits are empty: no reference to monitor against")
    det = OnnxDetector(onnx_path)
    frames = ((p, p, cv2.imread(p, cv2.IMREAD_COLOR)) for p in images)
    seen = run_images(det, frames, low, desc="monitor: reference")
    profile_of(seen).to_npz(builder.dir / "profile.npz")
    lines = [json.dumps({"name": s.name, **{k: v for k, v in s.record.items() if k != "detections"},
                         "dets": _dets_json(s.dets)}) for s in seen]
    (builder.dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    art = builder.commit({**key, "fingerprint": builder.fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "artifacts": {"profile": "profile.npz", "records": "records.jsonl"},
                          "metrics": {"images": len(seen)}})
    log.info("  monitor: reference profile of %d val/test images -> %s", len(seen), art.dir)
    return art


# ------------------------------------------------------------ windows
def iter_folder(root: Path, window: int) -> Iterator[Tuple[str, Optional[str], np.ndarray]]:
    """The newest ``window`` images of a folder (by modification time), oldest first."""
    import cv2

    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS), key=lambda p: (p.stat().st_mtime, str(p)))
    for p in files[-window:]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            log.warning("  monitor: skipped %s (cannot decode)", p)
            continue
        yield str(p), str(p), img


def iter_videos(paths: Sequence[Path], fps: float, window: int) -> Iterator[Tuple[str, Optional[str], np.ndarray]]:
    """Frames sampled at ``fps`` from each video in turn, at most ``window`` in all."""
    import cv2

    n = 0
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ValueError(f"monitor.source: cannot open video {path}")
        native = cap.get(cv2.CAP_PROP_FPS) or fps
        step = max(1, round(native / fps)) if fps else 1
        f = 0
        try:
            while n < window:
                ok, frame = cap.read()
                if not ok:
                    break
                if f % step == 0:
                    yield f"{path}#{f}", None, frame
                    n += 1
                f += 1
        finally:
            cap.release()


def window_from_log(log_dir: Path, window: int, low: float, model: Optional[str] = None) -> Tuple[List[Seen], int]:
    """The newest ``window`` successful requests of a serve request log, oldest first; also how many of the
    lines read were unreadable. The log is streamed newest first and reading stops at ``window`` records.

    Args:
        model: keep only requests answered by this model fingerprint (the log directory is shared by every
            export of a project; another model's embeddings and scores are not this model's traffic).
    """
    from cvops.requestlog import iter_log

    reader = iter_log(log_dir, newest_first=True)
    ok: List[dict] = []
    for r in reader:
        if r.get("status") == 200 and "width" in r and (model is None or r.get("model") == model):
            ok.append(r)
            if len(ok) >= window:
                break
    skipped = reader.skipped
    seen = []
    for r in reversed(ok):
        rec, dets = record_from_log(r, low)
        img = r.get("image_path")
        path = str(log_dir / img) if img else None
        seen.append(Seen(r.get("id", "?"), rec, dets, path if path and Path(path).exists() else None))
    return seen, skipped


# ------------------------------------------------------------ edge cases
def nn_distances(ref: np.ndarray, x: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """Distance of each row of ``x`` to its nearest row of ``ref`` (standardised by the reference)."""
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    r, q = (ref - mu) / sd, (x - mu) / sd
    d2 = (q ** 2).sum(1)[:, None] + (r ** 2).sum(1)[None] - 2 * q @ r.T
    if leave_one_out:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.maximum(d2.min(1), 0))


#: Image statistics whose range in the reference bounds ``far_image`` (:func:`edge_reasons`).
IMAGE_STATS = ("brightness", "contrast", "sharpness", "saturation", "width", "height", "aspect")


def _stats(seen: Sequence[Seen]) -> np.ndarray:
    return np.array([[float(s.record.get(k, np.nan)) if s.record.get(k) is not None else np.nan for k in IMAGE_STATS]
                     for s in seen], float).reshape(len(seen), len(IMAGE_STATS))


def far_images(ref_seen: Sequence[Seen], seen: Sequence[Seen], reference: bool = False,
               margin: float = 0.05) -> np.ndarray:
    """Whether each image has an image statistic (:data:`IMAGE_STATS`) outside the reference's range widened
    by ``margin`` of it; ``reference=True``: ``seen`` are the reference images, each against the others."""
    ref = _stats(ref_seen)
    x = _stats(seen)
    if len(ref) < 3 or not len(x):
        return np.zeros(len(x), bool)
    with np.errstate(invalid="ignore"):
        srt = np.sort(np.where(np.isnan(ref), np.inf, ref), axis=0)
        lo, lo2 = srt[0], srt[1]
        srt = np.sort(np.where(np.isnan(ref), -np.inf, ref), axis=0)
        hi, hi2 = srt[-1], srt[-2]
        if reference:  # without the image itself: an image that is the minimum sees the second smallest
            lo = np.where(x <= lo[None], lo2[None], lo[None])
            hi = np.where(x >= hi[None], hi2[None], hi[None])
        else:
            lo, hi = lo[None], hi[None]
        pad = margin * (hi - lo)
        out = (x < lo - pad) | (x > hi + pad)
    return (out & np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)).any(axis=1)


def edge_reasons(seen: Sequence[Seen], ref_embeddings: Optional[np.ndarray], low: float, near: float,
                 overlap_iou: float, quantile: float, reference: bool = False,
                 ref_seen: Optional[Sequence[Seen]] = None) -> List[List[str]]:
    """Why each image needs a human (empty list: it does not).

    * ``low_confidence``: no box scores ``low`` or more, but the model saw something (a box >= low / 2);
    * ``near_threshold``: a box within ``near`` of ``low`` that is not a weaker duplicate (IoU >=
      ``overlap_iou``) of a box scoring ``low + near`` or more (the model hesitates on an object);
    * ``overlap``: two boxes scoring ``low + near`` or more, of different classes, overlap with IoU >=
      ``overlap_iou`` (class confusion);
    * ``far_embedding``: farther from every reference image than ``quantile`` of the reference's own
      nearest-neighbour distances (content unlike the training data, as the model's features see it);
    * ``far_image``: an image statistic (brightness, contrast, sharpness, saturation, size, aspect) outside
      the range of the reference images ``ref_seen`` (content the model's features cannot tell apart from
      its training data, such as a street for a model that only knows shapes, still looks different).

    ``reference=True``: ``seen`` are the reference images themselves (their embeddings, in order): each is
    compared with the others (leave one out), which gives the reasons' rates in distribution.
    """
    far = np.zeros(len(seen), bool)
    embs = [s.record.get("embedding") for s in seen]
    if ref_embeddings is not None and len(ref_embeddings) > 2 and embs and all(e is not None for e in embs):
        limit = np.quantile(nn_distances(ref_embeddings, ref_embeddings, leave_one_out=True), quantile)
        far = nn_distances(ref_embeddings, np.asarray(embs, np.float32), leave_one_out=reference) > limit
    far_img = far_images(ref_seen, seen, reference) if ref_seen is not None else np.zeros(len(seen), bool)
    out = []
    for s, f, fi in zip(seen, far, far_img):
        reasons = []
        d = s.dets
        scores = d.scores if d is not None else np.zeros(0)
        if scores.size and scores.max() < low and scores.max() >= low / 2:
            reasons.append("low_confidence")
        if d is not None and scores.size:
            sure = scores >= low + near
            unsure = np.abs(scores - low) < near
            if unsure.any():
                iou = box_iou(d.boxes, d.boxes)
                # an unsure box that is not just a weaker duplicate of a confident one: the model hesitates
                if not sure.any() or (iou[np.ix_(unsure, sure)].max(1) < overlap_iou).any():
                    reasons.append("near_threshold")
            confident = scores >= low + near
            if confident.sum() > 1:
                b, lab = d.boxes[confident], d.labels[confident]
                iou = box_iou(b, b)
                np.fill_diagonal(iou, 0)
                if ((iou >= overlap_iou) & (lab[:, None] != lab[None])).any():
                    reasons.append("overlap")
        if f:
            reasons.append("far_embedding")
        if fi:
            reasons.append("far_image")
        out.append(reasons)
    return out


#: The reasons an image is an edge case (:func:`edge_reasons`).
REASONS = ("low_confidence", "near_threshold", "overlap", "far_embedding", "far_image")


def select_edge_cases(reasons: Sequence[Sequence[str]], ref_reasons: Sequence[Sequence[str]], rate: float,
                      scores: Sequence[float], cap: int) -> Tuple[List[int], Dict[str, Any]]:
    """Which window images go to people, most telling first: calibrated on the reference's own reasons.

    Each reason's in-distribution rate comes from the reference images (held-out val/test, with
    :func:`edge_reasons` ``reference=True``; Laplace-smoothed). A reason is **active** when the window has
    more images with it than that rate explains (above the 99.9 % binomial bound at the rate's 95 % upper
    credible value): the window shows it, so every image with an active reason is a case. Otherwise an image
    is a case only when its reasons are as rare as the rarest ``rate`` of the reference images (its surprise,
    the sum of -log rate of its reasons, reached by at most that share of them), which keeps an
    in-distribution window at about ``rate`` flagged. Cases are ranked by their active reasons (what the
    window shows more than the reference comes first), then by surprise (rare reasons such as
    ``far_embedding``, ``far_image``), then by the lowest top score; at most ``cap``.

    Returns:
        (indices into ``reasons``, the calibration: rates, expected and seen counts, active reasons).
    """
    import math

    from scipy.stats import beta, binom

    n_ref, n = len(ref_reasons), len(reasons)
    counts = {k: sum(k in r for r in ref_reasons) for k in REASONS}
    p = {k: (counts[k] + 1) / (n_ref + 2) for k in REASONS}
    upper = {k: float(beta.ppf(0.95, counts[k] + 1, n_ref - counts[k] + 1)) for k in REASONS}
    seen = {k: sum(k in r for r in reasons) for k in REASONS}
    active = {k for k in REASONS if n and seen[k] > binom.ppf(0.999, n, upper[k])}

    def surprise(rs: Sequence[str]) -> float:
        return sum(-math.log(p[k]) for k in set(rs) if k in p)

    ref_s = [surprise(r) for r in ref_reasons]

    def rare(rs: Sequence[str]) -> bool:  # as surprising as at most `rate` of the reference (a p-value)
        s = surprise(rs)
        return (sum(x >= s - 1e-9 for x in ref_s) + 1) / (n_ref + 1) <= rate

    picked = [i for i, r in enumerate(reasons) if r and (active & set(r) or rare(r))]
    picked.sort(key=lambda i: (-len(active & set(reasons[i])), -surprise(reasons[i]), float(scores[i])))
    info = {"reference_images": n_ref, "rates": {k: round(p[k], 4) for k in REASONS},
            "window": seen, "active": sorted(active), "rate": rate}
    return picked[:cap], info
