"""The closed loop: reviewed edge cases in FiftyOne -> a COCO version -> the next curate.

Everything runs for real: FiftyOne on the tests' own embedded mongod, generated
images, the curate stage through the Runner, and ``cvops review`` as a process.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Dict, List

import pytest

from cvops.config import compose_config
from cvops.curate.inputs import SourceError, iter_sources
from cvops.synthetic import SyntheticSpec, generate
from cvops.fo import connect
from cvops.annotate.review import curate_overrides, export_reviewed
from cvops.runner import Runner

W, H = 128, 96
SMALL = ["data.synthetic.num_images=6", "data.synthetic.videos=0", f"data.synthetic.image_size=[{W},{H}]",
         "data.synthetic.min_size=16", "data.synthetic.max_size=48", "curate.split.ratios={train:1.0}"]


def _images(root: Path, n: int = 5) -> List[Path]:
    """n generated stills, a seed other than the curate source's (no duplicates of it)."""
    spec = SyntheticSpec(num_images=n, image_size=(W, H), min_size=16, max_size=48, videos=0, empty_fraction=0.0,
                         seed=123)
    generate(root, spec, progress=False)
    return sorted((root / "images").glob("*.jpg"))


def _review_dataset(name: str, images: List[Path]) -> Any:
    """What the monitor stage leaves: prelabels, reasons, needs_review; then a human's work:

    0: ground_truth corrected + reviewed; 1: prelabels accepted (reviewed only);
    2: reviewed but rejected; 3: untouched; 4: ground_truth drawn but not tagged reviewed yet.
    """
    fo = connect()
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample_field("ground_truth", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    samples = []
    for p in images:
        s = fo.Sample(filepath=str(p), tags=["needs_review", "low_confidence"])
        s["prelabels"] = fo.Detections(detections=[
            fo.Detection(label="circle", bounding_box=[0.1, 0.2, 0.25, 0.5], confidence=0.31)])
        s["edge_reasons"] = ["low_confidence"]
        samples.append(s)
    ds.add_samples(samples, progress=False)
    by_path = {s.filepath: s for s in ds}
    s0, s1, s2, _s3, s4 = (by_path[str(p)] for p in images)
    s0["ground_truth"] = fo.Detections(detections=[
        fo.Detection(label="square", bounding_box=[0.5, 0.25, 0.25, 0.5]),
        fo.Detection(label="triangle", bounding_box=[0.0, 0.0, 0.125, 0.25])])
    s0.tags.append("reviewed")
    s1.tags.append("reviewed")
    s2.tags += ["reviewed", "rejected"]
    s4["ground_truth"] = fo.Detections(detections=[fo.Detection(label="square", bounding_box=[0.2, 0.2, 0.2, 0.2])])
    for s in (s0, s1, s2, s4):
        s.save()
    return ds


# ------------------------------------------------------------------ export
def test_export_counts_json_and_label_choice(project, tmp_path):
    imgs = _images(tmp_path / "shots")
    _review_dataset(f"{project}-review", imgs)
    res = export_reviewed(f"{project}-review", tmp_path / "out")
    assert (res["images"], res["boxes"], res["from_ground_truth"], res["from_prelabels"]) == (2, 3, 1, 1)
    assert res["skipped_unknown_labels"] == {} and res["new"] is True
    assert res["path"] == str(tmp_path / "out" / res["version"] / "annotations.json")
    assert len(res["version"]) == 12 and int(res["version"], 16) >= 0
    coco = json.loads(Path(res["path"]).read_text())
    assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]  # sorted labels seen
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file = {im["file_name"]: im for im in coco["images"]}
    assert set(by_file) == {str(imgs[0]), str(imgs[1])}  # not rejected, not untouched, not unreviewed
    assert all(Path(f).is_absolute() and (im["width"], im["height"]) == (W, H) for f, im in by_file.items())
    boxes = {(Path(coco["images"][a["image_id"] - 1]["file_name"]).name, names[a["category_id"]], tuple(a["bbox"]))
             for a in coco["annotations"]}
    assert boxes == {(imgs[0].name, "square", (64.0, 24.0, 32.0, 48.0)),  # relative -> pixels
                     (imgs[0].name, "triangle", (0.0, 0.0, 16.0, 24.0)),
                     (imgs[1].name, "circle", (12.8, 19.2, 32.0, 48.0))}  # prelabels accepted
    assert by_file[str(imgs[0])]["label_source"] == "ground_truth"
    assert by_file[str(imgs[1])]["label_source"] == "prelabels"


def test_classes_order_and_a_sample_with_an_unknown_label_quarantined_whole(project, tmp_path):
    imgs = _images(tmp_path / "shots")
    _review_dataset(f"{project}-review", imgs)
    res = export_reviewed(f"{project}-review", tmp_path / "out", classes=["square", "circle"])
    # sample 0 (square + triangle) is refused whole, with its row: never half its objects as ground truth
    assert res["skipped_unknown_labels"] == {"triangle": 1} and res["boxes"] == 1 and res["images"] == 1
    [row] = res["quarantined"]
    assert row["file"] == str(imgs[0]) and row["field"] == "ground_truth"
    assert "'triangle' is not one of the project's classes" in row["reasons"][0]
    coco = json.loads(Path(res["path"]).read_text())
    assert [c["name"] for c in coco["categories"]] == ["square", "circle"]


def test_same_content_same_version_any_change_a_new_one(project, tmp_path):
    fo = connect()
    imgs = _images(tmp_path / "shots")
    ds = _review_dataset(f"{project}-review", imgs)
    out = tmp_path / "out"
    first = export_reviewed(ds.name, out)
    stamp = Path(first["path"]).stat().st_mtime_ns
    again = export_reviewed(ds.name, out)
    assert again["version"] == first["version"] and again["new"] is False
    assert Path(again["path"]).stat().st_mtime_ns == stamp  # not rewritten
    ds.compute_metadata()  # sizes from FiftyOne metadata instead of the files: same content, same version
    assert export_reviewed(ds.name, out)["version"] == first["version"]

    s3 = ds[str(imgs[3])]
    s3.tags.append("reviewed")
    s3.save()
    more = export_reviewed(ds.name, out)
    assert more["version"] != first["version"] and more["images"] == 3

    s0 = ds[str(imgs[0])]
    s0["ground_truth"].detections[0].bounding_box = [0.5, 0.25, 0.25, 0.25]  # one corrected box
    s0.save()
    moved = export_reviewed(ds.name, out)
    assert moved["version"] not in (first["version"], more["version"])
    assert sorted(p.name for p in out.iterdir()) == sorted([first["version"], more["version"], moved["version"]])
    assert len(json.loads(Path(first["path"]).read_text())["images"]) == 2  # old versions stay as they were
    assert fo.dataset_exists(ds.name)


def test_errors_name_the_dataset_and_say_how_to_tag(project, tmp_path):
    with pytest.raises(ValueError, match=f"'{project}-nope' does not exist"):
        export_reviewed(f"{project}-nope", tmp_path / "out")
    fo = connect()
    ds = fo.Dataset(f"{project}-review", persistent=True)
    img = _images(tmp_path / "shots", n=2)
    ds.add_samples([fo.Sample(filepath=str(img[0]), tags=["needs_review"]),
                    fo.Sample(filepath=str(img[1]), tags=["needs_review", "reviewed", "rejected"])], progress=False)
    with pytest.raises(ValueError, match=rf"'{project}-review' has no samples tagged 'reviewed' out of 2 "
                                         r"\(1 tagged 'reviewed' are also tagged 'rejected'\).*cvops app --dataset"):
        export_reviewed(ds.name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- sources
def test_iter_sources_appends_extra_entries_after_the_main_ones():
    data: Dict[str, Any] = {"format": "sources", "path": None, "classes": ["a"], "sources": [{"format": "yolo",
                            "path": "/y.yaml"}], "extra": [{"format": "coco", "path": "/r.json"}]}
    got = list(iter_sources(data))
    assert [(s["format"], s["path"], s["classes"]) for s in got] == [("yolo", "/y.yaml", ["a"]),
                                                                     ("coco", "/r.json", ["a"])]
    assert all("extra" not in s and "sources" not in s for s in got)
    single = {"format": "coco", "path": "/main.json", "extra": [{"format": "coco", "path": "/r.json"}]}
    assert [s["path"] for s in iter_sources(single)] == ["/main.json", "/r.json"]
    with pytest.raises(SourceError, match=r"data.extra\[0\] has no 'format'"):
        list(iter_sources({"format": "coco", "path": "/m.json", "extra": [{"path": "/r.json"}]}))
    with pytest.raises(SourceError, match=r"data.extra\[1\] \(format images\) has no 'path'"):
        list(iter_sources({"format": "coco", "path": "/m.json",
                           "extra": [{"format": "coco", "path": "/r.json"}, {"format": "images"}]}))


def next_command(*args):
    """The printed command, with the console script's name (the real one prints how this process was started)."""
    return " ".join(["cvops", *(shlex.quote(a) for a in curate_overrides(*args))])


def test_next_command_replaces_earlier_exports_keeps_other_extras(tmp_path):
    root = tmp_path / "reviewed" / "p"
    extra = [{"format": "coco", "path": str(root / "aaaaaaaaaaaa" / "annotations.json")},
             {"format": "images", "path": "/data/more images"}]
    cmd = next_command(["recipe=quickstart", "data.extra=[]", "train.lr=0.01"], extra,
                       str(root / "b" / "annotations.json"), root)
    assert cmd == ("cvops recipe=quickstart train.lr=0.01 'data.extra=[{format: images, path: \"/data/more images\"}, "
                   f"{{format: coco, path: {root / 'b' / 'annotations.json'}, allow_outside_paths: true}}]'")
    cfg = compose_config(shlex.split(cmd)[1:] + ["project=p"])
    assert [e["path"] for e in cfg.data.extra] == ["/data/more images", str(root / "b" / "annotations.json")]


# ---------------------------------------------------------- the closed loop
def _curate(tmp_path: Path, project: str, tag: str, *overrides: str) -> Dict[str, Any]:
    cfg = compose_config([f"project={project}", "stages=[curate]", f"paths.store={tmp_path / 'store'}", *SMALL,
                          *overrides])
    run_dir = tmp_path / "runs" / tag
    Runner(cfg, run_dir).run()
    return json.loads((run_dir / "run.json").read_text())["stages"]["curate"]


def test_curate_with_the_export_makes_a_new_version_holding_the_reviewed_images(project, tmp_path):
    fo = connect()
    imgs = _images(tmp_path / "shots")
    _review_dataset(f"{project}-review", imgs)
    res = export_reviewed(f"{project}-review", tmp_path / "reviewed")
    base = _curate(tmp_path, project, "base")
    extra = shlex.split(next_command([], [], res["path"], tmp_path / "reviewed"))[1]  # the printed override
    merged = _curate(tmp_path, project, "merged", extra)
    assert merged["status"] == "ran" and merged["fingerprint"] != base["fingerprint"]  # extra is fingerprinted
    mb, mm = base["metrics"], merged["metrics"]
    assert mm["dataset_version"] != mb["dataset_version"] and mm["dataset_name"] != mb["dataset_name"]
    assert mm["images_in"] == mb["images_in"] + 2 and mm["images_kept"] == mb["images_kept"] + 2
    assert mm["boxes_kept"] == mb["boxes_kept"] + 3 and mm["images_quarantined"] == 0
    ds = fo.load_dataset(mm["dataset_name"])
    assert len(ds) == mm["images_kept"]
    paths = set(ds.values("filepath"))
    assert {str(imgs[0]), str(imgs[1])} <= paths and not {str(p) for p in imgs[2:]} & paths
    s0 = ds[str(imgs[0])]
    assert s0.source == "coco"
    got = sorted((d.label, [round(v, 4) for v in d.bounding_box]) for d in s0.ground_truth.detections)
    assert got == [("square", [0.5, 0.25, 0.25, 0.5]), ("triangle", [0.0, 0.0, 0.125, 0.25])]
    assert fo.load_dataset(mb["dataset_name"]).count() == mb["images_kept"]  # the old version is untouched


# --------------------------------------------------------------------- CLI
def _store_review(project: str, store: Path) -> str:
    """The review dataset the monitor fills for this store (its name carries the store's id)."""
    from cvops.annotate.review import review_dataset
    from cvops.store import FolderStore

    return review_dataset(project, FolderStore(store).id)


def test_cli_exports_and_prints_the_next_command(cvops, project, tmp_path):
    store = tmp_path / "store"
    name = _store_review(project, store)
    _review_dataset(name, _images(tmp_path / "shots"))
    r = cvops("review", "recipe=quickstart", f"project={project}", f"paths.store={store}", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "reviewed" / project
    (version,) = [p.name for p in out.iterdir()]
    ann = out / version / "annotations.json"
    assert ann.is_file()
    assert f"2 reviewed image(s), 3 box(es) from FiftyOne dataset '{name}'" in r.stdout
    assert "1 labelled in ground_truth, 1 with the confident prelabels accepted, at confidence >= 0.3" in r.stdout
    last = r.stdout.strip().splitlines()[-1].strip()
    args = (f"recipe=quickstart project={project} paths.store={store} "
            f"'data.extra=[{{format: coco, path: {ann}, allow_outside_paths: true}}]'")
    # printed to run as it is: the test started `python -m cvops` (the cvops script may not be on PATH)
    assert last.endswith(" " + args) and last[: -len(args)].split()[-2:] == ["-m", "cvops"], last
    cfg = compose_config(shlex.split(last)[-4:])  # it parses, and points at the export
    assert [dict(e) for e in cfg.data.extra] == [{"format": "coco", "path": str(ann), "allow_outside_paths": True}]


def test_cli_error_when_nothing_is_reviewed(cvops, project, tmp_path):
    fo = connect()
    name = _store_review(project, tmp_path / "store")
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample(fo.Sample(filepath=str(_images(tmp_path / "shots", n=1)[0]), tags=["needs_review"]))
    r = cvops("review", "recipe=quickstart", f"project={project}", f"paths.store={tmp_path / 'store'}",
              timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"cvops: error: review dataset '{name}' has no samples tagged 'reviewed'")
    assert f"cvops app --dataset {name}" in r.stderr and "Next:" not in r.stdout
    assert not (tmp_path / "reviewed").exists()


def test_another_store_of_the_project_neither_sees_nor_exports_these_reviews(cvops, project, tmp_path):
    """Each store has its own review dataset: a reviewed sample of store A never reaches store B's export."""
    a, b = tmp_path / "a", tmp_path / "b"
    name_a, name_b = _store_review(project, a), _store_review(project, b)
    assert name_a != name_b and name_a.startswith(f"{project}-review-")
    _review_dataset(name_a, _images(tmp_path / "shots"))
    r = cvops("review", "recipe=quickstart", f"project={project}", f"paths.store={b}", timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"review dataset '{name_b}' does not exist" in r.stderr and "stages=[monitor]" in r.stderr
    assert not (tmp_path / "reviewed").exists()
    # an explicit monitor.review_dataset is shared on purpose: it names the one dataset
    r = cvops("review", "recipe=quickstart", f"project={project}", f"paths.store={b}",
              f"monitor.review_dataset={name_a}", timeout=180)
    assert r.returncode == 0 and f"from FiftyOne dataset '{name_a}'" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------ what a reviewed sample becomes
def test_tagging_without_editing_accepts_only_the_confident_prelabels_one_label_per_object(project, tmp_path):
    """A monitor's prelabels go down to score 0.05, with one object under several classes: accepting them
    takes the confident boxes only (the project's ``confidence``), the most confident class per object."""
    fo = connect()
    img = _images(tmp_path / "shots", n=1)[0]
    ds = fo.Dataset(f"{project}-review", persistent=True)
    s = fo.Sample(filepath=str(img), tags=["reviewed"])
    obj = [0.25, 0.25, 0.5, 0.5]
    s["prelabels"] = fo.Detections(detections=[
        fo.Detection(label="circle", bounding_box=obj, confidence=0.62),
        fo.Detection(label="square", bounding_box=[0.26, 0.25, 0.49, 0.5], confidence=0.41),  # same object
        fo.Detection(label="triangle", bounding_box=obj, confidence=0.33),  # same object again
        fo.Detection(label="square", bounding_box=[0.0, 0.0, 0.2, 0.2], confidence=0.29),  # below confidence
        fo.Detection(label="triangle", bounding_box=[0.8, 0.8, 0.1, 0.1], confidence=0.05),
        fo.Detection(label="square", bounding_box=[0.0, 0.7, 0.2, 0.2], confidence=0.5)])
    ds.add_sample(s)
    res = export_reviewed(ds.name, tmp_path / "out", confidence=0.3, duplicate_iou=0.7)
    coco = json.loads(Path(res["path"]).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    got = sorted((names[a["category_id"]], a["bbox"]) for a in coco["annotations"])
    assert got == [("circle", [32.0, 24.0, 64.0, 48.0]), ("square", [0.0, 67.2, 25.6, 19.2])]
    assert res["from_prelabels"] == 1 and res["quarantined"] == []
    # a stricter project threshold keeps fewer
    strict = export_reviewed(ds.name, tmp_path / "out", confidence=0.6, duplicate_iou=0.7)
    assert strict["boxes"] == 1


def test_contradictory_or_outside_labels_are_refused_with_a_row_and_the_rest_exported(project, tmp_path):
    fo = connect()
    imgs = _images(tmp_path / "shots", n=3)
    ds = fo.Dataset(f"{project}-review", persistent=True)
    labels = [
        [fo.Detection(label="circle", bounding_box=[0.1, 0.1, 0.4, 0.4]),  # two classes on one object
         fo.Detection(label="square", bounding_box=[0.11, 0.1, 0.4, 0.41])],
        [fo.Detection(label="circle", bounding_box=[1.2, 0.1, 0.3, 0.3])],  # right of the image
        [fo.Detection(label="circle", bounding_box=[0.1, 0.1, 0.2, 0.2]),  # fine: two objects
         fo.Detection(label="square", bounding_box=[0.2, 0.2, 0.3, 0.3])],
    ]
    for img, dets in zip(imgs, labels):
        s = fo.Sample(filepath=str(img), tags=["reviewed"])
        s["ground_truth"] = fo.Detections(detections=dets)
        ds.add_sample(s)
    res = export_reviewed(ds.name, tmp_path / "out", classes=["circle", "square"])
    assert res["images"] == 1 and res["boxes"] == 2
    rows = {Path(r["file"]).name: r["reasons"] for r in res["quarantined"]}
    assert set(rows) == {imgs[0].name, imgs[1].name}
    assert "'circle' and 'square' on one object" in rows[imgs[0].name][0]
    assert f"lies outside the {W}x{H} image" in rows[imgs[1].name][0]


def test_reviewed_accuracy_scores_the_served_answers_per_model_and_week_and_reaches_metrics(tmp_path):
    """The reviewed edge cases of served traffic, scored against what people corrected them to, per model and
    ISO week; the monitor leaves the rows beside the request log and /metrics shows cvops_reviewed_map50."""
    import uuid

    from fastapi.testclient import TestClient

    from cvops.annotate import accuracy
    from cvops.requestlog import RequestLog
    from cvops.schema import ServeConfig
    from cvops.serve.app import create_app

    fo = connect()
    name = f"acc-{uuid.uuid4().hex[:8]}"
    ds = fo.Dataset(name, persistent=True)
    truth = [0.1, 0.2, 0.3, 0.3]
    rows = [("m1", "2026-11-30T10:00:00Z", truth, True), ("m1", "2026-11-30T11:00:00Z", truth, True),
            ("m1", "2026-12-07T09:00:00Z", [0.6, 0.6, 0.3, 0.3], True),  # a wrong answer, the next week
            ("m2", "2026-12-07T09:00:00Z", truth, True),
            ("m2", "2026-12-07T09:30:00Z", [0.6, 0.6, 0.3, 0.3], False)]  # not reviewed: not counted
    for k, (model, at, box, done) in enumerate(rows):
        s = fo.Sample(filepath=str(tmp_path / f"{k}.jpg"), tags=["needs_review"] + (["reviewed"] if done else []))
        s["prelabels"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=box, confidence=0.9)])
        s["ground_truth"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=truth)])
        s["served_model"], s["served_at"] = model, at
        ds.add_sample(s)
    got = accuracy.reviewed_accuracy(name, ["circle", "square"])
    assert [(r["week"], r["model"], r["images"], r["mAP50"]) for r in got] == [
        ("2026-W50", "m2", 1, 1.0), ("2026-W50", "m1", 1, 0.0), ("2026-W49", "m1", 2, 1.0)]
    log_dir = tmp_path / "log"
    log = RequestLog(log_dir)
    accuracy.write(log_dir, got)
    with TestClient(create_app(None, ServeConfig(), info={}, log=log)) as client:
        text = client.get("/metrics").text
    assert 'cvops_reviewed_map50{model="m1",week="2026-W49"} 1.0' in text
    assert 'cvops_reviewed_map50{model="m1",week="2026-W50"} 0.0' in text
    (log_dir / accuracy.FILE).write_text("{not json")  # a damaged file: no series, no failure
    assert accuracy.read(log_dir) == []
    ds.delete()
