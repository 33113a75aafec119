"""A review batch in Label Studio (``annotate.backend=labelstudio``): push it, load it back.

One Label Studio project per review dataset (a store's edge cases), made with a
labelling config built from the project's classes (rectangles; polygons for an
instance segmentation project). :func:`push` uploads the images of samples not
pushed yet, with the prelabels a reviewer would accept as the task's
predictions, and records the task id on each sample; pushing again adds only new
samples (it also finds tasks a crashed push made before it could record them).
:func:`load` reads the finished tasks back into the review field:

- a submitted annotation becomes the sample's labels, tagged ``reviewed``, with
  its provenance (``annotator``, ``ls_task``, ``ls_annotation``, ``annotated_at``);
- a skipped (cancelled) task tags the sample ``rejected``;
- an annotation whose labels cannot be ground truth (a class outside the
  project's, a box outside the image, two classes on one object) is kept on the
  sample as it came (``ls_quarantined``), tagged ``quarantined``, with a row;
- a sample whose review field was edited in FiftyOne after it was pushed is not
  overwritten: a conflict row says which, and the annotation waits in
  ``ls_conflict``.

Only the REST API is used (``requests``-style calls through httpx, already a cvops
dependency): Label Studio's own SDK pins numpy >= 2.2, which the cvops venv
cannot take. The API key comes from the environment variable
``annotate.api_key_env`` (a personal access token, or a legacy token), never
from the recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from xml.sax.saxutils import quoteattr

from cvops.annotate.labels import Box, accept, clip, mask_box, mask_to_polygons, polygons_to_mask, problems
from cvops.errors import UserError

#: The sample fields this backend writes.
TASK, PUSHED, ANNOTATION, ANNOTATOR, ANNOTATED_AT = "ls_task", "ls_pushed", "ls_annotation", "annotator", "annotated_at"
QUARANTINED, CONFLICT = "ls_quarantined", "ls_conflict"
QUARANTINE_TAG = "quarantined"
#: ``dataset.info`` key holding the Label Studio project of a review dataset.
INFO = "cvops_labelstudio"
UPLOAD_CHUNK = 16  # images per upload request


class LabelStudioError(UserError):
    """Label Studio cannot be reached, refuses the key, or lost the project (the message says which and how)."""


# ------------------------------------------------------------------ client
class Client:
    """The few Label Studio REST calls cvops makes, with errors a person can act on.

    Args:
        url: the server (``annotate.url``).
        key: the API key: a personal access token (a JWT, exchanged for an access token) or a legacy token.
        key_env: the variable the key came from, for messages.
        timeout: seconds per request.
    """

    def __init__(self, url: str, key: str, key_env: str, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.key_env = key_env
        self._http = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)
        if key.count(".") == 2:  # a personal access token: a refresh JWT, exchanged for a short-lived access token
            r = self._send("POST", "/api/token/refresh", json={"refresh": key}, auth=False)
            self._auth = {"Authorization": f"Bearer {r.json()['access']}"}
        else:
            self._auth = {"Authorization": f"Token {key}"}

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, auth: bool = True, ok404: bool = False, **kw: Any) -> Any:
        import httpx

        headers = dict(self._auth) if auth else {}
        try:
            r = self._http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as e:
            raise LabelStudioError(f"Label Studio at annotate.url={self.url} cannot be reached ({type(e).__name__}: "
                                   f"{e}); start it (README: Label Studio) or set annotate.url") from None
        if r.status_code in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the API key in ${self.key_env} "
                                   f"({r.status_code}): copy the key from Label Studio's Account & Settings page "
                                   f"into {self.key_env}")
        if r.status_code == 404 and ok404:
            return None
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} answered {r.status_code}: "
                                   f"{r.text[:300]}")
        return r

    def check(self) -> Dict[str, Any]:
        """The user the key belongs to (proves the server and the key)."""
        return self._send("GET", "/api/current-user/whoami").json()

    def project(self, pid: int) -> Optional[Dict[str, Any]]:
        r = self._send("GET", f"/api/projects/{int(pid)}", ok404=True)
        return None if r is None else r.json()

    def create_project(self, title: str, label_config: str, description: str) -> Dict[str, Any]:
        return self._send("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                         "description": description}).json()

    def upload(self, pid: int, files: Sequence[Path]) -> List[str]:
        """Upload image files (not as tasks); their URLs as Label Studio serves them, in order."""
        urls: List[str] = []
        for i in range(0, len(files), UPLOAD_CHUNK):
            chunk = files[i:i + UPLOAD_CHUNK]
            handles = [open(f, "rb") for f in chunk]
            try:
                parts = [(f"file{k}", (Path(f).name, h)) for k, (f, h) in enumerate(zip(chunk, handles))]
                r = self._send("POST", f"/api/projects/{int(pid)}/import", params={"commit_to_project": "false"},
                               files=parts).json()
            finally:
                for h in handles:
                    h.close()
            ids = list(r.get("file_upload_ids") or [])
            if len(ids) != len(chunk):
                raise LabelStudioError(f"Label Studio at {self.url} stored {len(ids)} of {len(chunk)} uploaded "
                                       "images; push again (what was stored is reused)")
            by_id = {int(u["id"]): u["file"] for u in self._send(
                "GET", f"/api/projects/{int(pid)}/file-uploads", params={"all": "true"}).json()}
            urls += ["/data/" + by_id[int(x)] for x in ids]
        return urls

    def import_tasks(self, pid: int, tasks: List[Dict[str, Any]]) -> int:
        return int(self._send("POST", f"/api/projects/{int(pid)}/import", json=tasks).json().get("task_count", 0))

    def tasks(self, pid: int) -> Iterator[Dict[str, Any]]:
        """Every task of the project with its annotations."""
        page = 1
        while True:
            r = self._send("GET", "/api/tasks", ok404=True,
                           params={"project": int(pid), "page": page, "page_size": 100, "fields": "all"})
            if r is None:  # past the last page
                return
            body = r.json()
            tasks = body.get("tasks", body) if isinstance(body, dict) else body
            if not tasks:
                return
            yield from tasks
            if isinstance(body, dict) and page * 100 >= int(body.get("total", 0)):
                return
            page += 1

    def users(self) -> Dict[int, str]:
        """User id -> e-mail (the key's own user only, where the key may not list the organisation)."""
        try:
            found = self._send("GET", "/api/users").json()
        except LabelStudioError:
            found = [self.check()]
        return {int(u["id"]): str(u.get("email") or u.get("username") or u["id"]) for u in found}


def connect(url: str, key_env: str, timeout: float = 30.0) -> Client:
    """A client for ``annotate.url`` with the key from ``$annotate.api_key_env``, checked against the server."""
    from cvops.errors import ConfigError

    key = os.environ.get(key_env, "").strip()
    if not key:
        raise ConfigError(f"annotate.api_key_env={key_env}: the variable is not set; put the Label Studio API key "
                          f"(Account & Settings > Personal Access Token) in it: export {key_env}=...")
    client = Client(url, key, key_env, timeout)
    client.check()
    return client


# ------------------------------------------------------------------ labelling config
def label_config(classes: Sequence[str], masks: bool) -> str:
    """Label Studio's labelling config: the image and the project's classes, as rectangles or polygons."""
    tag = "PolygonLabels" if masks else "RectangleLabels"
    labels = "".join(f"<Label value={quoteattr(str(c))}/>" for c in classes)
    return (f'<View><Image name="image" value="$image" zoom="true"/>'
            f'<{tag} name="label" toName="image">{labels}</{tag}></View>')


def _results(boxes: Sequence[Box], w: int, h: int, masks: bool) -> List[Dict[str, Any]]:
    """Boxes (pixels) as Label Studio results (percent of the image)."""
    from cvops import masks as rle

    out = []
    for k, b in enumerate(boxes):
        base = {"id": f"p{k}", "from_name": "label", "to_name": "image", "original_width": w,
                "original_height": h, "image_rotation": 0}
        if b.score is not None:
            base["score"] = round(float(b.score), 4)
        if masks:
            if b.segmentation is not None:
                polys = mask_to_polygons(rle.decode(b.segmentation))
            else:
                x, y, bw, bh = b.xywh
                polys = [[(x, y), (x + bw, y), (x + bw, y + bh), (x, y + bh)]]
            for j, poly in enumerate(polys):
                out.append({**base, "id": f"p{k}_{j}", "type": "polygonlabels",
                            "value": {"points": [[100.0 * px / w, 100.0 * py / h] for px, py in poly],
                                      "closed": True, "polygonlabels": [b.label]}})
            continue
        x, y, bw, bh = b.xywh
        out.append({**base, "type": "rectanglelabels",
                    "value": {"x": 100.0 * x / w, "y": 100.0 * y / h, "width": 100.0 * bw / w,
                              "height": 100.0 * bh / h, "rotation": 0, "rectanglelabels": [b.label]}})
    return out


def boxes_from_results(results: Sequence[Dict[str, Any]], w: int, h: int) -> Tuple[List[Box], List[str]]:
    """A Label Studio annotation's results as pixel boxes (polygons filled into masks), and what could not be read.

    A rotated rectangle becomes the axis-aligned box around it (Label Studio turns it about its top-left
    corner). A result with several labels, or none, is not read and says so.
    """
    from cvops import masks as rle

    boxes: List[Box] = []
    bad: List[str] = []
    if not isinstance(results, list):
        return [], [f"the annotation's result is {type(results).__name__}, not a list of regions"]
    for r in results:
        if not isinstance(r, dict) or not isinstance(r.get("value") or {}, dict):
            bad.append(f"a region that is not an object: {str(r)[:80]!r}")
            continue
        kind, v = r.get("type"), r.get("value") or {}
        labels = v.get(kind) if kind else None
        if kind not in ("rectanglelabels", "polygonlabels"):
            continue  # another control's result (a relation, a comment): not a label of ours
        if not isinstance(labels, list) or len(labels) != 1:
            bad.append(f"a {kind[:-6]} with labels {labels!r} (exactly one is needed)")
            continue
        label = str(labels[0])
        try:
            if kind == "rectanglelabels":
                x, y = float(v["x"]) * w / 100.0, float(v["y"]) * h / 100.0
                bw, bh = float(v["width"]) * w / 100.0, float(v["height"]) * h / 100.0
                if not all(math.isfinite(c) for c in (x, y, bw, bh)):
                    raise ValueError("a coordinate that is not a finite number")
                rot = math.radians(float(v.get("rotation") or 0.0))
                if rot:
                    c, s = math.cos(rot), math.sin(rot)
                    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
                    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
                    x, y, bw, bh = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
                boxes.append(Box(label, [x, y, bw, bh]))
            else:
                pts = [(float(p[0]) * w / 100.0, float(p[1]) * h / 100.0) for p in v["points"]]
                if not all(math.isfinite(c) for p in pts for c in p):
                    raise ValueError("a point that is not a finite number")
                mask = polygons_to_mask([pts], w, h)
                box = mask_box(mask)
                if box is None:  # wholly outside the image, or fewer than 3 points
                    xs, ys = [p[0] for p in pts] or [0.0], [p[1] for p in pts] or [0.0]
                    boxes.append(Box(label, [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]))
                    continue
                boxes.append(Box(label, box, rle.encode(mask)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            bad.append(f"a {kind[:-6]} labelled '{label}' without usable geometry ({type(e).__name__}: {e})")
    return boxes, bad


# ------------------------------------------------------------------ FiftyOne side
def _labels(fo: Any, boxes: Sequence[Box], w: int, h: int, masks: bool) -> Any:
    """Pixel boxes as the review field's FiftyOne labels (relative coordinates)."""
    from cvops import masks as rle

    if not masks:
        return fo.Detections(detections=[fo.Detection(label=b.label, bounding_box=[
            b.xywh[0] / w, b.xywh[1] / h, b.xywh[2] / w, b.xywh[3] / h]) for b in boxes])
    lines = []
    for b in boxes:
        polys = mask_to_polygons(rle.decode(b.segmentation)) if b.segmentation is not None else [
            [(b.xywh[0], b.xywh[1]), (b.xywh[0] + b.xywh[2] - 1, b.xywh[1]),
             (b.xywh[0] + b.xywh[2] - 1, b.xywh[1] + b.xywh[3] - 1), (b.xywh[0], b.xywh[1] + b.xywh[3] - 1)]]
        lines.append(fo.Polyline(label=b.label, points=[[(x / w, y / h) for x, y in p] for p in polys],
                                 closed=True, filled=True))
    return fo.Polylines(polylines=lines)


def _state(labels: Any) -> str:
    """A fingerprint of a review field's content (what was pushed vs what is there now)."""
    doc = labels.to_dict() if labels is not None else None

    def strip(x: Any) -> Any:  # ids and attributes a tool may add do not change the labels
        if isinstance(x, dict):
            return {k: strip(v) for k, v in sorted(x.items()) if k not in ("_id", "id", "attributes", "tags")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        if isinstance(x, float):
            return round(x, 5)
        return x

    return hashlib.sha256(json.dumps(strip(doc), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ensure_fields(fo: Any, ds: Any) -> None:
    schema = ds.get_field_schema()
    for name, kind in ((TASK, fo.IntField), (PUSHED, fo.StringField), (ANNOTATION, fo.IntField),
                       (ANNOTATOR, fo.StringField), (ANNOTATED_AT, fo.StringField), (QUARANTINED, fo.StringField),
                       (CONFLICT, fo.StringField)):
        if name not in schema:
            ds.add_sample_field(name, kind)


def push(dataset_name: str, classes: Sequence[str], *, masks: bool, confidence: float, duplicate_iou: float,
         url: str, key_env: str, timeout: float = 30.0, max_samples: Optional[int] = None) -> Dict[str, Any]:
    """Push the review dataset's open samples that are not in Label Studio yet; returns the batch report."""
    from cvops.annotate.app import PRELABELS, ensure_review_field, review_field
    from cvops.fo import connect as fo_connect, edit_dataset
    from cvops.annotate.review import REJECTED_TAG, REVIEWED_TAG, ReviewError, boxes_of, image_size

    fo = fo_connect()
    if not fo.dataset_exists(dataset_name):
        raise ReviewError(f"review dataset '{dataset_name}' does not exist: this store has no edge cases yet; the "
                          "monitor stage puts them there (stages=[monitor])")
    field = review_field(masks)
    started = time.time()
    client = connect(url, key_env, timeout)
    notes: List[str] = []
    try:
        with edit_dataset(dataset_name) as ds:
            _ensure_fields(fo, ds)
            ensure_review_field(ds, masks)
            info = dict(ds.info.get(INFO) or {})
            project = client.project(info["project"]) if info.get("project") and info.get("url") == client.url \
                else None
            if info.get("project") and project is None:
                gone = ds.exists(TASK).match_tags([REVIEWED_TAG, REJECTED_TAG, QUARANTINE_TAG], bool=False)
                notes.append(f"Label Studio project {info['project']} at {info.get('url')} is gone (deleted, or "
                             f"another server): a new project gets the {len(gone)} unfinished sample(s) again")
                gone.set_field(TASK, None).save()
            if project is None:
                title = f"cvops {dataset_name}"[:50]
                project = client.create_project(title, label_config(classes, masks),
                                                f"Edge cases of FiftyOne dataset {dataset_name}, pushed by cvops "
                                                "annotate; load them back with cvops annotate --load")
                info = {"url": client.url, "project": int(project["id"]), "title": title}
                ds.info = {**ds.info, INFO: info}
                ds.save()
            pid = int(project["id"])
            todo = ds.match_tags([REVIEWED_TAG, REJECTED_TAG, QUARANTINE_TAG], bool=False).exists(TASK, False)
            existing = {str(t.get("data", {}).get("cvops_sample")): int(t["id"]) for t in client.tasks(pid)}
            ids = todo.values("id")
            recovered = {sid: existing[sid] for sid in ids if sid in existing}  # a crashed push's tasks
            new_ids = [sid for sid in ids if sid not in existing]
            if max_samples is not None:
                new_ids = new_ids[: max(0, int(max_samples))]
            pushed = 0
            if new_ids:
                view = ds.select(new_ids, ordered=True)
                has_pre = PRELABELS in ds.get_field_schema()
                paths, meta, cur = view.values(["filepath", "metadata", field])
                pre = view.values(PRELABELS) if has_pre else [None] * len(paths)
                urls = client.upload(pid, [Path(p) for p in paths])
                tasks = []
                for sid, fp, m, p, c, img in zip(new_ids, paths, meta, pre, cur, urls):
                    w, h = image_size(fp, m)
                    if c is not None:  # the field a reviewer edits is already filled (the App's prepare, a person)
                        shown, model = boxes_of(c, w, h)[0], "cvops-review-field"
                    else:
                        shown = accept(clip(boxes_of(p, w, h)[0], w, h), confidence, duplicate_iou)
                        model = "cvops-prelabels"
                    tasks.append({"data": {"image": img, "cvops_sample": sid, "cvops_file": Path(fp).name},
                                  "predictions": [{"model_version": model, "result": _results(shown, w, h, masks)}]})
                client.import_tasks(pid, tasks)
                pushed = len(tasks)
                existing = {str(t.get("data", {}).get("cvops_sample")): int(t["id"]) for t in client.tasks(pid)}
            mapped = {sid: existing[sid] for sid in [*recovered, *new_ids] if sid in existing}
            if mapped:
                sel = ds.select(list(mapped))
                states = dict(zip(sel.values("id"), [_state(v) for v in sel.values(field)]))
                sel.set_values(TASK, mapped, key_field="id")
                sel.set_values(PUSHED, states, key_field="id")
            total_tasks = len(existing)
    finally:
        client.close()
    return {"action": "push", "dataset": dataset_name, "backend": "labelstudio", "url": client.url,
            "project": pid, "pushed": pushed, "recovered": len(recovered),
            "waiting": max(0, len(ids) - len(recovered) - pushed), "tasks": total_tasks, "notes": notes,
            "seconds": round(time.time() - started, 2)}


def load(dataset_name: str, classes: Sequence[str], *, masks: bool, duplicate_iou: float, url: str, key_env: str,
         timeout: float = 30.0) -> Dict[str, Any]:
    """Read the finished Label Studio tasks back into the review dataset; returns the batch report."""
    from cvops.annotate.app import ensure_review_field, review_field
    from cvops.fo import connect as fo_connect, edit_dataset
    from cvops.annotate.review import REJECTED_TAG, REVIEWED_TAG, ReviewError, image_size

    fo = fo_connect()
    if not fo.dataset_exists(dataset_name):
        raise ReviewError(f"review dataset '{dataset_name}' does not exist: nothing was pushed from this store")
    field = review_field(masks)
    started = time.time()
    client = connect(url, key_env, timeout)
    rows: List[Dict[str, Any]] = []
    counts = {"finished": 0, "skipped": 0, "conflicts": 0, "quarantined": 0, "unfinished": 0, "unchanged": 0,
              "unknown_tasks": 0}
    per_annotator: Dict[str, Dict[str, int]] = {}
    try:
        with edit_dataset(dataset_name) as ds:
            info = dict(ds.info.get(INFO) or {})
            if not info.get("project"):
                raise LabelStudioError(f"review dataset '{dataset_name}' was never pushed to Label Studio: push it "
                                       "first (cvops annotate recipe=... annotate.backend=labelstudio)")
            if client.project(info["project"]) is None:
                raise LabelStudioError(f"Label Studio project {info['project']} ('{info.get('title')}') is gone "
                                       f"from {client.url}: its annotations cannot be loaded; push again to make a "
                                       "new project for the unfinished samples")
            _ensure_fields(fo, ds)
            ensure_review_field(ds, masks)
            users = client.users()
            by_id = {sid: k for k, sid in enumerate(ds.values("id"))}
            samples = {s.id: s for s in ds.select(list(by_id))} if by_id else {}
            for task in client.tasks(int(info["project"])):
                sid = str(task.get("data", {}).get("cvops_sample"))
                sample = samples.get(sid)
                if sample is None:
                    counts["unknown_tasks"] += 1
                    continue
                done = [a for a in task.get("annotations") or [] if a.get("result") is not None
                        or a.get("was_cancelled")]
                if not done:
                    counts["unfinished"] += 1
                    continue
                ann = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a["id"]))
                if sample[ANNOTATION] == int(ann["id"]) and sample[ANNOTATED_AT] == str(ann.get("updated_at")):
                    counts["unchanged"] += 1
                    continue
                by = ann.get("completed_by")
                by = by.get("id") if isinstance(by, dict) else by
                who = users.get(int(by or 0), str(by))
                mine = per_annotator.setdefault(who, {"finished": 0, "skipped": 0, "quarantined": 0, "conflicts": 0})
                row = {"file": sample.filepath, "sample_id": sid, "task": int(task["id"]), "annotator": who}
                if _state(sample[field]) != sample[PUSHED]:  # edited in FiftyOne since cvops last wrote it
                    sample[CONFLICT] = json.dumps(ann.get("result") or [])
                    sample.save()
                    counts["conflicts"] += 1
                    mine["conflicts"] += 1
                    rows.append({**row, "kind": "conflict", "reasons": [
                        f"'{field}' was edited in FiftyOne after the push; the Label Studio annotation is kept in "
                        f"'{CONFLICT}', not applied: settle it in the App, or clear '{field}' and load again"]})
                    continue
                _provenance(sample, task, ann, who)
                if ann.get("was_cancelled"):
                    _tag(sample, REJECTED_TAG, drop=[REVIEWED_TAG, QUARANTINE_TAG])
                    sample.save()
                    counts["skipped"] += 1
                    mine["skipped"] += 1
                    continue
                w, h = image_size(sample.filepath, sample.metadata)
                boxes, unreadable = boxes_from_results(ann.get("result") or [], w, h)
                why = unreadable + problems(boxes, w, h, classes, duplicate_iou)
                if why:
                    sample[QUARANTINED] = json.dumps(ann.get("result") or [])
                    _tag(sample, QUARANTINE_TAG, drop=[REVIEWED_TAG])
                    sample.save()
                    counts["quarantined"] += 1
                    mine["quarantined"] += 1
                    rows.append({**row, "kind": "quarantined", "reasons": why})
                    continue
                sample[field] = _labels(fo, clip(boxes, w, h), w, h, masks)
                sample[PUSHED] = _state(sample[field])
                sample[QUARANTINED] = None
                sample[CONFLICT] = None
                _tag(sample, REVIEWED_TAG, drop=[REJECTED_TAG, QUARANTINE_TAG])
                sample.save()
                counts["finished"] += 1
                mine["finished"] += 1
    finally:
        client.close()
    return {"action": "load", "dataset": dataset_name, "backend": "labelstudio", "url": client.url,
            "project": int(info["project"]), **counts, "per_annotator": per_annotator, "rows": rows,
            "seconds": round(time.time() - started, 2)}


def _provenance(sample: Any, task: Dict[str, Any], ann: Dict[str, Any], who: str) -> None:
    sample[TASK] = int(task["id"])
    sample[ANNOTATION] = int(ann["id"])
    sample[ANNOTATOR] = who
    sample[ANNOTATED_AT] = str(ann.get("updated_at") or ann.get("created_at"))


def _tag(sample: Any, tag: str, drop: Sequence[str]) -> None:
    tags = [t for t in sample.tags if t not in drop]
    if tag not in tags:
        tags.append(tag)
    sample.tags = tags
