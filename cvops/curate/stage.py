"""The curate stage: sources -> validated, deduplicated, split, versioned dataset.

Artifacts (in the store, ``curate/<fingerprint>/``):

- ``export/{train,val,test}.json``: frozen COCO files training reads (absolute
  image paths, categories in ``data.classes`` order);
- ``quarantine.csv``: every rejected file, label, box and duplicate, with reason;
- ``summary.json``: the metrics below, the class list and the dataset name;
- ``report/*.png``: class histogram, boxes per image, box sizes (also copied
  into the run dir);
- ``normalised/``, ``frames/``: images cvops had to write (EXIF-rotated or
  colour-converted copies, sampled video frames); originals are never touched.

The FiftyOne dataset ``<project>-<version[:8]>-<owner[:6]>`` (persistent; see :func:`dataset_name`) holds every kept
sample with ``ground_truth`` detections, its split as a tag and field, and its
provenance (source, original path, video, frame index, timestamp,
normalisation applied).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from cvops import masks
from cvops.curate import dedup, split
from cvops.curate.inputs import fetch, iter_sources
from cvops.curate.sources.items import Item
from cvops.curate.sources.ledger import Ledger, account_files
from cvops.curate.sources.reader import read_source
from cvops.curate.validate import (Sample, check_boxes, check_masks, open_image, phash, sharpness, short_stem,
                                   yolo_boxes)
from cvops.errors import SourceError
from cvops.schema import DedupConfig, DedupPolicy, DifferingLabels
from cvops.stages import StageContext, StageResult

log = logging.getLogger(__name__)  # details: cvops.log (the console shows its warnings)


# ------------------------------------------------------------------ gather
def gather(data: Dict[str, Any], workdir: Path, ledger: Ledger, max_archive_mb: float = 4096,
           max_pixels: Optional[int] = None) -> Tuple[List[Item], List[str]]:
    """Items from every configured source, and the class names they declare.

    Every file under a source ends up an item or a ledger row (see :func:`cvops.curate.sources.ledger.account_files`);
    each item carries the decode limit ``max_pixels`` (``curate.max_pixels``).
    """
    items: List[Item] = []
    declared: List[str] = []
    for i, src in enumerate(iter_sources(data)):
        src = fetch(src, workdir / "source" / f"remote-{i}")  # s3://... roots: into the artifact first
        got, names = read_source(i, src, workdir, ledger, max_archive_mb)
        items += got
        declared += names
    account_files(ledger)
    for it in items:
        it.max_pixels = max_pixels
    seen = set()
    declared = [c for c in declared if not (c in seen or seen.add(c))]
    return items, declared


def _own_media(samples: List[Sample], work: Path) -> None:
    """Copy every kept image that lives outside the artifact into ``media/`` (named by content, so identical
    files are stored once), and point the samples at the copies: the artifact, its COCO files and its FiftyOne
    dataset then hold everything another machine needs (it downloads the artifact into its cache)."""
    import shutil

    copied = 0
    for s in samples:
        src = Path(s.filepath)
        if work in src.parents:
            continue
        dst = work / "media" / s.sha256[:2] / f"{s.sha256}{src.suffix.lower()}"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied += 1
        s.filepath = dst
    if copied:
        log.info("  curate: %d kept images copied into the artifact (media/) for the object store", copied)


# ------------------------------------------------------------------ decode
Decoded = Tuple[Item, Path, int, int, List[str], list, str, int, float]


def _features(item: Item, path: Path, rgb: np.ndarray, changes: List[str], boxes: list, sha: str,
              want_sharpness: bool) -> Decoded:
    """What curate keeps of a decoded image (the pixels themselves are dropped)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    return (item, path, w, h, changes, boxes, sha, phash(gray), sharpness(gray) if want_sharpness else 0.0)


def _decode(items: List[Item], workdir: Path, ledger: Ledger, want_sharpness: bool = False) -> List[Decoded]:
    """Decode every item: stills via PIL on a thread pool (decoders release the GIL),
    frames sequentially per video. Unreadable ones go to the ledger."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    from tqdm import tqdm

    from cvops.console import live, track

    out: List[Decoded] = []
    frames_by_video: Dict[Path, List[Item]] = defaultdict(list)
    stills = []
    for it in items:
        (frames_by_video[it.path] if "frame_index" in it.meta else stills).append(it)

    def still(it: Item) -> Optional[Decoded]:
        got = open_image(it, workdir, ledger)
        if got is None:
            return None
        path, rgb, changes, boxes = got
        return _features(it, path, rgb, changes, boxes, hashlib.sha256(path.read_bytes()).hexdigest(), want_sharpness)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for r in track(pool.map(still, stills), "curate: images", total=len(stills)):
            if r is not None:
                out.append(r)
    for video, frame_items in frames_by_video.items():
        want = {it.meta["frame_index"]: it for it in frame_items}
        fdir = workdir / "frames" / f"{short_stem(video.stem)}-{hashlib.sha256(str(video).encode()).hexdigest()[:8]}"
        fdir.mkdir(parents=True, exist_ok=True)
        cap = cv2.VideoCapture(str(video))
        idx, last = 0, max(want)
        try:
            with tqdm(total=len(want), desc=f"curate: frames of {video.name}", leave=False, disable=not live()) as bar:
                while idx <= last:
                    if idx not in want:
                        if not cap.grab():
                            break
                    else:
                        ok, frame = cap.read()
                        if not ok:
                            break
                        it = want.pop(idx)
                        path = fdir / f"{idx:06d}.jpg"
                        cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                        it.path = path
                        sha = hashlib.sha256(frame.tobytes()).hexdigest()
                        out.append(_features(it, path, frame[..., ::-1], [], list(it.boxes or []), sha, want_sharpness))
                        bar.update()
                    idx += 1
        finally:
            cap.release()
        for f, it in want.items():
            ledger.add("image", it.ref, "video frame could not be decoded", f"frame {f}", boxes=len(it.boxes or []))
    return out


# ---------------------------------------------------------------- the stage
def run(ctx: StageContext) -> StageResult:
    """Read every source, quarantine what cannot be used, deduplicate, split, export COCO, fill FiftyOne."""
    data, cur, project = ctx.config.data, ctx.config.curate, ctx.config.project
    work = ctx.workdir
    ledger = Ledger()
    clock = _Clock()
    items, declared = gather(dataclasses.asdict(data), work, ledger, cur.max_archive_mb, cur.max_pixels)
    clock.lap("read")
    if not items:
        rows = [r for r in ledger.rows if r["kind"] == "image"]
        reasons = Counter(r["reason"] for r in rows)
        top = ", ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        first = next((r for r in rows if r["reason"] == reasons.most_common(1)[0][0]), None) if rows else None
        why = (f"; {len(rows)} quarantined while reading: {top}. The first: {first['file']}: {first['detail']}"
               if first else "")
        raise SourceError(f"no images found in data.path={data.path} (format {data.format}){why}")
    images_in = len(items) + ledger.count("image")  # readers' image rows (outside the root, bad entries) came in too
    boxes_in = sum(len(it.boxes or []) + len(it.meta.get("normalized_boxes", [])) for it in items) + ledger.boxes()
    class_map = dict(data.class_map or {})
    classes = list(data.classes) if data.classes else \
        list(dict.fromkeys(class_map.get(c, c) for c in declared))

    samples: List[Sample] = []
    clipped = masks_clipped = 0
    dd = cur.dedup  # choices (policy, differing_labels) are Enums: checked by the schema before the run
    for it, path, w, h, changes, boxes, sha, ph, sharp in _decode(items, work, ledger, dd.policy is DedupPolicy.keep_sharpest):
        if it.declared_size and tuple(it.declared_size) != (w, h):
            ledger.add("image", it.ref, "image size differs from the annotation",
                       f"image {w}x{h}, annotation {it.declared_size[0]}x{it.declared_size[1]}",
                       boxes=len(boxes) + len(it.meta.get("normalized_boxes", [])))
            continue
        boxes = boxes + yolo_boxes(it, w, h)
        kept, n_clipped = check_boxes(it, boxes, w, h, classes, class_map, cur.min_box_size,
                                      cur.clip_boxes, ledger)
        clipped += n_clipped
        if cur.masks:
            kept, n_clipped = check_masks(it, kept, w, h, ledger)
            masks_clipped += n_clipped
        if not kept and not cur.keep_empty and it.boxes is not None:
            ledger.add("image", it.ref, "no boxes left (curate.keep_empty=false)", boxes=0)
            continue
        samples.append(Sample(path, it, w, h, kept, sha, changes, ph, sharp))
    clock.lap("decode")

    # --- dedup: drop only what adds no label; near duplicates with other labels stay, grouped
    decision, dedup_rows = _deduplicate(samples, dd)
    index_of = {id(s): i for i, s in enumerate(samples)}
    kept_samples = [s for i, s in enumerate(samples) if i not in decision.dropped]

    # --- split (grouped, stratified, seeded): a source's groups (videos, group_by) joined with near-duplicate groups
    sp = cur.split
    group_by = sp.group_by
    groups = [str(s.item.meta.get(group_by) if group_by and group_by in s.item.meta else
                  getattr(s.item, group_by, None) if group_by else s.item.group) for s in kept_samples]
    groups = [g if g != "None" else f"#{i}" for i, g in enumerate(groups)]
    groups = _join_groups(groups, [index_of[id(s)] for s in kept_samples], decision.grouped)
    fixed = [s.item.split for s in kept_samples] if sp.respect_source else None
    if sp.keep:
        kept_split = _kept_splits(ctx, str(sp.keep))
        given = fixed or [None] * len(kept_samples)
        fixed = [kept_split.get(s.sha256) or given[i] for i, s in enumerate(kept_samples)]
        log.info("  curate: %d of %d images keep their split from curate %s (curate.split.keep)",
                 sum(1 for x in fixed if x), len(fixed), sp.keep)
    splits = split.assign(groups, [[b.label for b in s.boxes] for s in kept_samples], dict(sp.ratios),
                          sp.seed, sp.stratify, fixed)
    for s, name in zip(kept_samples, splits):
        s.split = name
    cross = _cross_split_near_dups(kept_samples, dd.hamming_threshold)
    empty_splits = [k for k, v in sp.ratios.items() if v > 0 and k not in splits]
    if empty_splits:
        log.warning("  curate: split(s) %s got no images (%d groups for %d splits); add data or change "
                    "curate.split.ratios", empty_splits, len(set(groups)), len(sp.ratios))

    # --- classes actually used, version, exports
    used = Counter(b.label for s in kept_samples for b in s.boxes)
    unused = [c for c in classes if used[c] == 0]
    if unused:
        log.warning("  curate: classes declared but never used (not trained): %s", ", ".join(unused))
    final_classes = [c for c in classes if used[c] > 0]
    version = _version(kept_samples, final_classes)
    if getattr(ctx.store, "url", None):  # an object store: the artifact carries its images to other machines
        _own_media(kept_samples, work)
    exports = _export_coco(kept_samples, final_classes, work / "export", list(sp.ratios))
    clock.lap("dedup_split_export")

    boxes_kept = sum(len(s.boxes) for s in kept_samples)
    boxes_dedup = sum(r["boxes"] for r in dedup_rows if r["action"] == "dropped")
    metrics = {
        "images_in": images_in,
        "images_kept": len(kept_samples),
        "images_quarantined": ledger.count("image"),
        "images_deduplicated": len(decision.dropped),
        "images_grouped": len({i for i, k, _ in decision.grouped} | {k for i, k, _ in decision.grouped}),
        "near_duplicate_groups": _group_count(decision.grouped),
        "labelled_images_dropped": sum(1 for r in dedup_rows if r["action"] == "dropped" and "labels differ" in r["detail"]),
        "empty_images": sum(1 for s in kept_samples if not s.boxes),
        "boxes_in": boxes_in,
        "boxes_kept": boxes_kept,
        "boxes_quarantined": ledger.boxes(),
        "boxes_deduplicated": boxes_dedup,
        "boxes_clipped": clipped,
        **({"masks_kept": sum(1 for s in kept_samples for b in s.boxes if b.mask is not None),
            "masks_clipped": masks_clipped} if cur.masks else {}),
        "classes": final_classes,
        "unused_classes": unused,
        "splits": {k: splits.count(k) for k in sp.ratios},
        "cross_split_near_duplicates": cross,
        "normalised_images": sum(1 for s in kept_samples if s.normalised),
        "videos_unreadable": ledger.count("video"),
        "files_skipped": ledger.count("file"),  # not images (unsupported type, OS metadata, nested archive, ...)
        "dataset_version": version,
    }
    _conserve(metrics)
    dataset = _fiftyone(project, version, kept_samples, final_classes, metrics, build=(ctx.store_id, ctx.fingerprint))
    metrics["dataset_name"] = dataset
    clock.lap("fiftyone")

    _write_quarantine(work / "quarantine.csv", ledger.rows + dedup_rows)
    plots = _plots(kept_samples, final_classes, work / "report")
    clock.lap("report")
    metrics["seconds_by_phase"] = clock.laps
    (work / "summary.json").write_text(json.dumps({**metrics, "exports": exports}, indent=2))
    log.info("  curate: %d images in -> %d kept, %d quarantined, %d duplicates; boxes %d -> %d; splits %s; "
             "dataset %s", images_in, len(kept_samples), metrics["images_quarantined"], len(decision.dropped), boxes_in,
             boxes_kept, metrics["splits"], dataset)
    artifacts = {f"coco_{k}": f"export/{k}.json" for k in exports}
    artifacts.update({"quarantine": "quarantine.csv", "summary": "summary.json", "report": "report"})
    reports = [str(p.relative_to(work)) for p in plots] + ["quarantine.csv"]
    return StageResult(artifacts, metrics, reports=reports)


class _Clock:
    def __init__(self) -> None:
        import time

        self._time = time.perf_counter
        self._t = self._time()
        self.laps: Dict[str, float] = {}

    def lap(self, name: str) -> None:
        t = self._time()
        self.laps[name] = round(t - self._t, 3)
        self._t = t


def _labels(s: Sample) -> dedup.Labels:
    """A sample's boxes relative to its size, or None when its source has no labels for it."""
    if s.item.boxes is None and "normalized_boxes" not in s.item.meta:
        return None
    return [(b.label, b.x / s.width, b.y / s.height, (b.x + b.w) / s.width, (b.y + b.h) / s.height) for b in s.boxes]


def _deduplicate(samples: List[Sample], dd: DedupConfig) -> Tuple[dedup.Decision, List[Dict[str, Any]]]:
    """The dedup decision (see :func:`cvops.curate.dedup.deduplicate`) and its quarantine rows."""
    if not dd.enabled:
        return dedup.Decision(), []
    order = list(range(len(samples)))
    if dd.policy is DedupPolicy.keep_sharpest:
        order.sort(key=lambda i: -samples[i].sharpness)
    labels = [_labels(s) for s in samples]
    decision = dedup.deduplicate([s.sha256 for s in samples], [s.phash for s in samples], labels, order,
                                 dd.hamming_threshold, dd.label_iou,
                                 drop_differing=dd.differing_labels is DifferingLabels.drop)
    rows = []
    for i, (k, d, why) in sorted(decision.dropped.items()):
        same = dedup.equivalent(labels[i], labels[k], dd.label_iou)
        note = "unlabelled" if labels[i] is None else "same labels" if same else \
            f"labels differ: {len(samples[i].boxes)} box(es) lost (curate.dedup.differing_labels=drop)"
        rows.append({"kind": "duplicate", "file": samples[i].item.ref, "reason": why, "action": "dropped",
                     "detail": f"of {samples[k].item.ref} (hamming {d}, {note}, policy {dd.policy})",
                     "boxes": len(samples[i].boxes)})
    for i, k, d in decision.grouped:
        rows.append({"kind": "duplicate", "file": samples[i].item.ref, "action": "grouped",
                     "reason": "exact duplicate with different labels" if samples[i].sha256 == samples[k].sha256
                     else "near duplicate with different labels",
                     "detail": f"kept, same split as {samples[k].item.ref} (hamming {d})", "boxes": 0})
    return decision, rows


def _join_groups(groups: List[str], ids: List[int], pairs: List[Tuple[int, int, int]]) -> List[str]:
    """Split groups: items sharing a group key or linked by a near-duplicate pair (transitively) share one."""
    parent = list(range(len(groups)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: Dict[str, int] = {}
    for pos, g in enumerate(groups):
        parent[find(pos)] = find(first.setdefault(g, pos))
    pos_of = {sample: pos for pos, sample in enumerate(ids)}
    for i, k, _ in pairs:
        if i in pos_of and k in pos_of:
            parent[find(pos_of[i])] = find(pos_of[k])
    return [groups[find(pos)] for pos in range(len(groups))]


def _group_count(pairs: List[Tuple[int, int, int]]) -> int:
    items = {i for i, _, _ in pairs} | {k for _, k, _ in pairs}
    return len(set(_join_groups([f"#{i}" for i in sorted(items)], sorted(items), pairs)))


def _conserve(m: Dict[str, Any]) -> None:
    """The counts must add up; if they do not, cvops has a bug, not the data."""
    if m["images_in"] != m["images_kept"] + m["images_quarantined"] + m["images_deduplicated"]:
        raise AssertionError(f"image counts do not add up: {m}")
    if m["boxes_in"] != m["boxes_kept"] + m["boxes_quarantined"] + m["boxes_deduplicated"]:
        raise AssertionError(f"box counts do not add up: {m}")


def _cross_split_near_dups(samples: List[Sample], threshold: int) -> int:
    index = dedup.HammingIndex(threshold)
    for i, s in enumerate(samples):
        index.add(s.phash, i)
    pairs = 0
    for i, s in enumerate(samples):
        pairs += sum(1 for j, _ in index.query(s.phash) if j > i and samples[j].split != s.split)
    return pairs


def _version(samples: List[Sample], classes: List[str]) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for s in sorted(samples, key=lambda s: (s.sha256, s.item.ref)):
        boxes = sorted((b.label, round(b.x, 2), round(b.y, 2), round(b.w, 2), round(b.h, 2),
                        b.mask["counts"] if b.mask else "") for b in s.boxes)
        h.update(json.dumps([s.sha256, s.split, boxes]).encode())
    return h.hexdigest()


def _export_coco(samples: List[Sample], classes: List[str], out: Path, split_names: List[str]) -> Dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    cat = {c: i + 1 for i, c in enumerate(classes)}
    counts = {}
    for name in split_names:
        coco: Dict[str, Any] = {"images": [], "annotations": [],
                                "categories": [{"id": i, "name": c} for c, i in cat.items()]}
        for s in (s for s in samples if s.split == name):
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": str(s.filepath), "width": s.width, "height": s.height})
            for b in s.boxes:
                ann = {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cat[b.label],
                       "bbox": [b.x, b.y, b.w, b.h], "area": b.w * b.h, "iscrowd": 0}
                if b.mask is not None:  # COCO's convention: an instance's area is its mask's
                    ann.update(segmentation=b.mask, area=masks.area(b.mask))
                coco["annotations"].append(ann)
        (out / f"{name}.json").write_text(json.dumps(coco))
        counts[name] = len(coco["images"])
    return counts


def _write_quarantine(path: Path, rows: List[Dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["kind", "action", "file", "reason", "detail", "boxes"])
        w.writeheader()
        w.writerows(sorted(({"action": "skipped" if r["kind"] == "file" else "quarantined", **r} for r in rows),
                           key=lambda r: (r["kind"], r["action"], str(r["file"]), r["reason"])))


def _kept_splits(ctx: StageContext, fingerprint: str) -> Dict[str, str]:
    """Image content hash -> split, of the dataset version curate ``fingerprint`` made (``curate.split.keep``).

    Raises:
        SourceError: that artifact, or its FiftyOne dataset, is not there.
    """
    from cvops.fo import connect

    art = ctx.store.get("curate", fingerprint)
    name = art.metrics.get("dataset_name") if art is not None else None
    fo = connect()
    if not name or not fo.dataset_exists(name):
        raise SourceError(f"curate.split.keep={fingerprint}: no curate artifact with its FiftyOne dataset in the "
                          f"store {ctx.store} (cvops models lists the exports' curate fingerprints)")
    ds = fo.load_dataset(name)
    return {h: sp for h, sp in zip(ds.values("sha256"), ds.values("split")) if h and sp}


def dataset_name(project: str, version: str, build: Tuple[str, str]) -> str:
    """``<project>-<version[:8]>-<build[:6]>``: the data version, and which store's which curate build owns it.

    Two stores (or two code versions) curating the same data get two datasets, so a
    committed artifact's dataset is never replaced by another build's.
    """
    owner = hashlib.sha256(":".join(build).encode()).hexdigest()
    return f"{project}-{version[:8]}-{owner[:6]}"


def _fiftyone(project: str, version: str, samples: List[Sample], classes: List[str], metrics: Dict[str, Any],
              build: Tuple[str, str]) -> str:
    from cvops.fo import connect

    fo = connect()
    name = dataset_name(project, version, build)
    owner = {"store_id": build[0], "fingerprint": build[1]}
    if fo.dataset_exists(name):
        # Only this very build (same store, same fingerprint; we hold its lock and it is not committed) can
        # have made it: a killed run's leftover. Anything else is refused, never deleted.
        if fo.load_dataset(name).info.get("cvops_build") != owner:
            raise SourceError(f"FiftyOne dataset '{name}' exists and was not made by this curate build "
                              f"({owner}); cvops never deletes a dataset it does not own. Rename or delete it "
                              "yourself if it is not needed.")
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    ds.default_classes = classes
    fo_samples = []
    for s in samples:
        dets = []
        for b in s.boxes:
            if b.mask is None:
                dets.append(fo.Detection(label=b.label, bounding_box=[b.x / s.width, b.y / s.height,
                                                                      b.w / s.width, b.h / s.height]))
            else:  # an instance mask: its box in whole pixels (masks.fiftyone_mask)
                box, mask = masks.fiftyone_mask(b.mask, [b.x, b.y, b.w, b.h])
                dets.append(fo.Detection(label=b.label, bounding_box=box, mask=mask))
        fields: Dict[str, Any] = {"ground_truth": fo.Detections(detections=dets), "split": s.split,
                                  "source": s.item.source, "original_path": str(s.item.ref),
                                  "sha256": s.sha256, "normalised": s.normalised}
        if s.item.group:
            fields["group"] = s.item.group
        for k in ("video", "frame_index", "timestamp"):
            if k in s.item.meta:
                fields[k] = s.item.meta[k]
        fo_samples.append(fo.Sample(filepath=str(s.filepath), tags=[s.split], **fields))
    ds.add_samples(fo_samples, progress=False, validate=False)  # built from validated data above
    ds.info = {"project": project, "version": version, "curate": {k: v for k, v in metrics.items()},
               "cvops_build": owner}
    ds.save()
    return name


def _plots(samples: List[Sample], classes: List[str], out: Path) -> List[Path]:
    from matplotlib.figure import Figure

    def subplots() -> Tuple[Any, Any]:
        fig = Figure(figsize=(6, 3.5))
        return fig, fig.add_subplot()

    out.mkdir(parents=True, exist_ok=True)
    splits = sorted({s.split for s in samples if s.split})
    paths = []
    fig, ax = subplots()
    bottom = np.zeros(len(classes))
    for sp in splits:
        counts = np.array([sum(1 for s in samples if s.split == sp for b in s.boxes if b.label == c) for c in classes])
        ax.bar(classes, counts, bottom=bottom, label=sp)
        bottom += counts
    ax.set_title("boxes per class")
    if splits:
        ax.legend()
    paths.append(_save(fig, out / "class_histogram.png"))
    fig, ax = subplots()
    n = [len(s.boxes) for s in samples]
    ax.hist(n, bins=range(0, max(n + [1]) + 2), align="left")
    ax.set_title("boxes per image")
    ax.set_xlabel("boxes")
    paths.append(_save(fig, out / "boxes_per_image.png"))
    fig, ax = subplots()
    sizes = [np.sqrt(b.w * b.h) for s in samples for b in s.boxes]
    ax.hist(sizes or [0], bins=30)
    ax.set_title("box size (sqrt of area, px)")
    paths.append(_save(fig, out / "box_sizes.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
