"""Curate on generated data: every format, every quarantine reason, counts that add up."""

from __future__ import annotations

import csv
import json
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvops.config import compose_config
from cvops.curate import dedup, split
from cvops.runner import Runner
import sys
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_data  # noqa: E402

COUNTS = ("images_in", "images_kept", "images_quarantined", "images_deduplicated",
          "boxes_in", "boxes_kept", "boxes_quarantined", "boxes_deduplicated")


@pytest.fixture
def curate(tmp_path):
    """Run the real curate stage (FiftyOne on the embedded mongod); clean up its datasets."""
    import fiftyone as fo

    project = f"t{uuid.uuid4().hex[:8]}"
    runs = []

    def _run(*overrides, store=None):
        cfg = compose_config([f"project={project}", "stages=[curate]", f"paths.store={store or tmp_path / 'store'}",
                              *overrides])
        run_dir = tmp_path / "runs" / str(len(runs))
        Runner(cfg, run_dir).run()
        m = json.loads((run_dir / "run.json").read_text())["stages"]["curate"]
        m["dir"] = Path(m["artifacts"]["dir"])
        m["rows"] = list(csv.DictReader(open(m["dir"] / "quarantine.csv")))
        runs.append(m)
        return m

    yield _run
    for name in fo.list_datasets():
        if name.startswith(project):
            fo.delete_dataset(name)


def _conserved(m):
    mt = m["metrics"]
    assert mt["images_in"] == mt["images_kept"] + mt["images_quarantined"] + mt["images_deduplicated"]
    assert mt["boxes_in"] == mt["boxes_kept"] + mt["boxes_quarantined"] + mt["boxes_deduplicated"]


def test_coco_every_quarantine_reason_named_and_counts_conserved(curate, tmp_path):
    expect = make_data.coco_with_defects(tmp_path / "coco")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "data.classes=[cat,dog]",
               "curate.split.ratios={train:1.0}")
    for k in COUNTS:
        assert m["metrics"][k] == expect[k], (k, m["metrics"])
    _conserved(m)
    assert {r["reason"] for r in m["rows"]} == expect["reasons"]
    by_reason = {r["reason"]: r for r in m["rows"]}
    assert by_reason["image file missing"]["file"].endswith("missing.png")
    assert by_reason["duplicate annotation row"]["file"].endswith("#annotation-2")
    assert m["metrics"]["boxes_clipped"] == 2 and m["metrics"]["empty_images"] == 1  # good.png and its copy
    export = json.loads((m["dir"] / "export" / "train.json").read_text())
    assert [c["name"] for c in export["categories"]] == ["cat", "dog"]
    assert sorted(a["bbox"] for a in export["annotations"]) == [[5.0, 5.0, 20.0, 10.0], [50.0, 40.0, 14.0, 8.0]]
    assert all(Path(im["file_name"]).is_file() for im in export["images"])


def test_fiftyone_dataset_holds_the_kept_samples(curate, tmp_path):
    import fiftyone as fo

    make_data.coco_with_defects(tmp_path / "coco")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "data.classes=[cat,dog]")
    ds = fo.load_dataset(m["metrics"]["dataset_name"])
    assert ds.persistent and len(ds) == m["metrics"]["images_kept"]
    assert ds.count("ground_truth.detections") == m["metrics"]["boxes_kept"]
    assert set(ds.distinct("split")) <= {"train", "val", "test"}
    assert ds.info["version"] == m["metrics"]["dataset_version"]
    s = ds.match({"original_path": {"$regex": "good.png$"}}).first()
    assert s.source == "coco" and s.tags == [s.split]


def test_yolo_foreign_absolute_paths_splits_and_bad_lines(curate, tmp_path):
    make_data.yolo_dataset(tmp_path / "y")
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "curate.split.respect_source=true")
    mt = m["metrics"]
    assert mt["images_in"] == 5 and mt["splits"] == {"train": 3, "val": 1, "test": 1}  # test/ found on disk
    _conserved(m)
    reasons = {(r["reason"], Path(r["file"]).name) for r in m["rows"]}
    assert ("label line does not parse", "im20.txt:2") in reasons  # file and line named
    assert ("label file without an image", "orphan.txt") in reasons
    assert mt["classes"] == ["a", "b"]


def test_mixed_sources_merge_into_one_class_list(curate, tmp_path):
    make_data.yolo_dataset(tmp_path / "y", foreign_paths=False)
    make_data.voc_dataset(tmp_path / "voc")
    m = curate("data=sources", f"data.sources=[{{format: yolo, path: '{tmp_path / 'y' / 'data.yaml'}'}},"
               f"{{format: voc, path: '{tmp_path / 'voc'}'}}]", "++data.class_map={car: a}")
    mt = m["metrics"]
    assert mt["classes"] == ["a", "b", "person"]  # declared order, car merged into a
    assert mt["images_in"] == 5 + 2
    _conserved(m)


def test_class_map_merges_and_unused_classes_are_reported(curate, tmp_path):
    make_data.yolo_dataset(tmp_path / "y", foreign_paths=False)
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "++data.class_map={b: a}",
               "data.classes=[a,c]")
    assert m["metrics"]["classes"] == ["a"] and m["metrics"]["unused_classes"] == ["c"]
    _conserved(m)


def test_colour_modes_become_8bit_rgb_without_touching_originals(curate, tmp_path):
    modes = make_data.colour_modes(tmp_path / "imgs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "imgs").iterdir()}
    m = curate("data=images", f"data.path={tmp_path / 'imgs'}")
    assert m["metrics"]["images_kept"] == len(modes) and m["metrics"]["normalised_images"] == len(modes)
    for p in (m["dir"] / "normalised").iterdir():
        with Image.open(p) as im:
            assert im.mode == "RGB"
    assert {p.name: p.read_bytes() for p in (tmp_path / "imgs").iterdir()} == before


def test_exif_orientation_rotates_image_and_boxes(curate, tmp_path):
    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    w, h = make_data.exif_rotated(root / "images" / "rot.jpg", orientation=6)  # stored 60x40, shown 40x60
    coco = {"images": [{"id": 1, "file_name": "rot.jpg", "width": w, "height": h}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10]}],
            "categories": [{"id": 1, "name": "x"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    m = curate("data=coco", f"data.path={root / 'ann.json'}", f"data.images_root={root / 'images'}",
               "curate.split.ratios={train:1.0}")
    export = json.loads((m["dir"] / "export" / "train.json").read_text())
    im = export["images"][0]
    assert (im["width"], im["height"]) == (40, 60)
    # orientation 6 = rotate 90° clockwise to display: stored top-left strip -> displayed top-right
    assert export["annotations"][0]["bbox"] == [30.0, 0.0, 10.0, 20.0]
    with Image.open(im["file_name"]) as shown:
        assert shown.size == (40, 60)


def test_video_frames_sampled_grouped_and_timestamped(curate, tmp_path):
    from cvops.synthetic import SyntheticSpec, generate

    gen = generate(tmp_path / "gen", SyntheticSpec(num_images=0, videos=3, video_frames=24, video_fps=8), progress=False)
    (tmp_path / "gen" / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)
    m = curate("data=video", f"data.path={tmp_path / 'gen' / 'videos'}", "data.fps=4", "curate.dedup.enabled=false")
    mt = m["metrics"]
    assert mt["images_in"] == 3 * 12 and mt["videos_unreadable"] == 1  # every 2nd frame of 3 videos
    assert any(r["reason"] == "the decoder cannot open this video" for r in m["rows"])
    import fiftyone as fo

    ds = fo.load_dataset(mt["dataset_name"])
    by_video = {}
    for v, sp, f, t in zip(*ds.values(["video", "split", "frame_index", "timestamp"])):
        by_video.setdefault(v, set()).add(sp)
        assert t == pytest.approx(f / 8)
    assert len(by_video) == 3 and all(len(s) == 1 for s in by_video.values())  # no video straddles splits
    assert gen["videos"][0]["frames"] == 24


def test_synthetic_source_dedups_near_identical_frames_and_reports_policy(curate):
    m = curate("data.synthetic.num_images=10", "data.synthetic.videos=1", "data.synthetic.video_frames=24",
               "curate.dedup.policy=keep_sharpest")
    dups = [r for r in m["rows"] if r["kind"] == "duplicate" and r["action"] == "dropped"]
    assert m["metrics"]["images_deduplicated"] == len(dups) > 0
    assert all("policy keep_sharpest" in r["detail"] and "same labels" in r["detail"] for r in dups)
    grouped = [r for r in m["rows"] if r["action"] == "grouped"]  # frames whose shapes moved: kept
    assert m["metrics"]["images_grouped"] >= len({r["file"] for r in grouped}) > 0
    assert m["metrics"]["cross_split_near_duplicates"] == 0
    _conserved(m)


def test_same_inputs_same_version_and_rerun_after_kill_has_no_duplicates(curate, tmp_path):
    import fiftyone as fo

    a = curate("data.synthetic.num_images=20", "data.synthetic.videos=0", store=tmp_path / "s1")
    # another store curating the same data: same version, its own dataset; the first one is untouched
    b = curate("data.synthetic.num_images=20", "data.synthetic.videos=0", store=tmp_path / "s2")
    assert b["status"] == "ran" and a["metrics"]["dataset_version"] == b["metrics"]["dataset_version"]
    assert a["metrics"]["dataset_name"] != b["metrics"]["dataset_name"]
    first = fo.load_dataset(a["metrics"]["dataset_name"])
    assert len(first) == a["metrics"]["images_kept"]
    assert all(p.startswith(str(tmp_path / "s1")) for p in first.values("filepath"))  # not s2's media
    # a killed rebuild of s1's artifact (manifest gone) left its dataset half-filled: the rebuild replaces it
    (Path(a["artifacts"]["dir"]) / "manifest.json").unlink()
    first.add_sample(fo.Sample(filepath="/nonexistent/junk.jpg"))
    again = curate("data.synthetic.num_images=20", "data.synthetic.videos=0", store=tmp_path / "s1")
    assert again["status"] == "ran" and again["metrics"]["dataset_name"] == a["metrics"]["dataset_name"]
    assert len(fo.load_dataset(a["metrics"]["dataset_name"])) == a["metrics"]["images_kept"]
    # a dataset of that name that this build did not make is never deleted
    (Path(a["artifacts"]["dir"]) / "manifest.json").unlink()
    fo.load_dataset(a["metrics"]["dataset_name"]).info = {"cvops_build": {"store_id": "other", "fingerprint": "x"}}
    fo.load_dataset(a["metrics"]["dataset_name"]).save()
    from cvops.errors import SourceError

    with pytest.raises(SourceError, match="never deletes"):
        curate("data.synthetic.num_images=20", "data.synthetic.videos=0", store=tmp_path / "s1")
    assert fo.dataset_exists(a["metrics"]["dataset_name"])
    c = curate("data.synthetic.num_images=20", "data.synthetic.videos=0", "curate.split.seed=1", store=tmp_path / "s3")
    assert c["metrics"]["dataset_version"] != a["metrics"]["dataset_version"]


def test_bad_sources_fail_with_the_path(curate, tmp_path):
    from cvops.errors import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        curate("data=coco", f"data.path={tmp_path / 'nope.json'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        curate("data=images", f"data.path={tmp_path / 'empty'}")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(SourceError, match="line 1"):
        curate("data=coco", f"data.path={tmp_path / 'bad.json'}")


# ------------------------------------------------------------- unit level
def test_hamming_index_matches_brute_force():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    hashes += [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in hashes[:100]]  # near copies
    for t in (0, 2, 4, 8):
        index = dedup.HammingIndex(t)
        for i, h in enumerate(hashes):
            index.add(h, i)
        for q in hashes[::17]:
            got = sorted(k for k, _ in index.query(q))
            want = sorted(i for i, h in enumerate(hashes) if (h ^ q).bit_count() <= t)
            assert got == want


def test_dedup_threshold_controls_near_duplicates():
    base = 0x0F0F0F0F0F0F0F0F
    hashes = [base, base ^ 0b111, base ^ 0xFF00]  # 3 and 8 bits away
    assert dedup.near_duplicates(hashes, [0, 1, 2], 2) == {}
    assert dedup.near_duplicates(hashes, [0, 1, 2], 3) == {1: (0, 3)}
    assert dedup.near_duplicates(hashes, [0, 1, 2], 8) == {1: (0, 3), 2: (0, 8)}


def test_grouped_stratified_split():
    groups = [f"v{i // 10}" for i in range(200)] + [f"img{i}" for i in range(300)]
    labels = [["a"]] * 200 + [["b"] if i % 10 else ["rare"] for i in range(300)]
    out = split.assign(groups, labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    for g in set(groups):
        assert len({s for s, gg in zip(out, groups) if gg == g}) == 1
    share = {k: out.count(k) / len(out) for k in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.7, abs=0.03) and share["val"] == pytest.approx(0.15, abs=0.03)
    rare = [s for s, l in zip(out, labels) if l == ["rare"]]
    assert {"train", "val", "test"} <= set(rare)  # the rare class reaches every split
    assert out == split.assign(groups, labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert out != split.assign(groups, labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)


def test_few_groups_still_fill_every_split():
    out = split.assign(["a"] * 31 + ["b"] * 31, [[]] * 62, {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    assert sorted(set(out)) == ["train", "val"]
    out = split.assign(list("abcdefghij"), [[]] * 10, {"train": 0.7, "val": 0.15, "test": 0.15}, 0)
    assert sorted(out.count(s) for s in ("train", "val", "test")) == [1, 2, 7]


def test_respect_source_keeps_given_splits():
    out = split.assign(["a", "b", "c", "d"], [["x"]] * 4, {"train": 0.5, "val": 0.5}, 0,
                       fixed=["test", None, "val", None])
    assert out[0] == "test" and out[2] == "val" and set(out[1::2]) <= {"train", "val"}


def test_phash_survives_recompression_but_not_other_images():
    from cvops.curate.validate import phash

    import cv2

    def smooth(seed):
        small = np.random.default_rng(seed).uniform(0, 255, (6, 8)).astype(np.float32)
        return cv2.resize(small, (128, 96), interpolation=cv2.INTER_CUBIC)

    a, b = smooth(1), smooth(2)
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 3, a.shape), 0, 255)
    assert (phash(a) ^ phash(noisy)).bit_count() <= 4
    assert (phash(a) ^ phash(b)).bit_count() > 8


def test_voc_folder_with_splits_broken_xml_and_missing_image(curate, tmp_path):
    make_data.voc_dataset(tmp_path / "voc")
    m = curate("data=voc", f"data.path={tmp_path / 'voc'}", "curate.split.respect_source=true")
    mt = m["metrics"]
    assert mt["images_in"] == 2 and mt["boxes_kept"] == 4 and mt["classes"] == ["car", "person"]
    assert mt["splits"] == {"train": 1, "val": 1, "test": 0}
    reasons = {(r["reason"], Path(r["file"]).name) for r in m["rows"]}
    assert ("label file does not parse", "broken.xml") in reasons
    assert ("label file without an image", "lonely.xml") in reasons
    assert [r["detail"] for r in m["rows"] if r["reason"] == "label file does not parse"][0].startswith("line 2")
    export = json.loads((m["dir"] / "export" / "train.json").read_text())
    assert sorted(a["bbox"] for a in export["annotations"]) == [[4.0, 6.0, 26.0, 14.0], [10.0, 10.0, 10.0, 30.0]]
    _conserved(m)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archives_are_extracted_safely(curate, tmp_path, kind):
    import shutil

    make_data.voc_dataset(tmp_path / "voc")
    archive = shutil.make_archive(str(tmp_path / "voc_export"), "zip" if kind == "zip" else "gztar", tmp_path / "voc")
    m = curate("data=voc", f"data.path={archive}")
    assert m["metrics"]["images_in"] == 2 and m["metrics"]["boxes_kept"] == 4


def test_archive_path_traversal_and_size_limit_are_refused(tmp_path):
    import zipfile

    from cvops.curate.sources.archives import extract
    from cvops.errors import SourceError

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.txt", "gotcha")
    with pytest.raises(SourceError, match="outside the folder"):
        extract(evil, tmp_path / "x", max_mb=10)
    assert not (tmp_path.parent / "outside.txt").exists()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (3 * 1024 * 1024))
    with pytest.raises(SourceError, match="max_archive_mb"):
        extract(bomb, tmp_path / "y", max_mb=1)


def test_small_and_unclipped_boxes_are_quarantined(curate, tmp_path):
    make_data.coco_with_defects(tmp_path / "coco")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "data.classes=[cat,dog]",
               "curate.clip_boxes=false")
    reasons = {r["reason"] for r in m["rows"]}
    assert "box extends outside the image (curate.clip_boxes=false)" in reasons
    assert m["metrics"]["boxes_kept"] == 1 and m["metrics"]["boxes_clipped"] == 0
    m2 = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "data.classes=[cat,dog]",
                "curate.min_box_size=15", store=tmp_path / "s2")
    assert any(r["reason"] == "box smaller than curate.min_box_size" and "14.00x8.00" in r["detail"] for r in m2["rows"])
    _conserved(m)
    _conserved(m2)


@pytest.mark.slow
def test_killed_curate_process_rerun_gives_the_same_dataset(cvops):
    import signal
    import time

    import fiftyone as fo

    args = ("project=killcheck", "stages=[curate]", "data.synthetic.num_images=300", "data.synthetic.videos=0")
    proc = cvops.popen(*args)
    t0 = time.time()
    while time.time() - t0 < 60:
        line = proc.stdout.readline()
        if "curate    running" in line:
            break
    time.sleep(1.0)  # mid-stage: generating or decoding
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not list(cvops.store.glob("curate/*/manifest.json"))
    r = cvops(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    (manifest,) = list(cvops.store.glob("curate/*/manifest.json"))
    metrics = json.loads(manifest.read_text())["metrics"]
    assert len(fo.load_dataset(metrics["dataset_name"])) == metrics["images_kept"]
    other = cvops.workdir / "clean"
    other.mkdir()
    clean = cvops("paths.store=" + str(other / "store"), *args)
    assert clean.returncode == 0
    (m2,) = list((other / "store").glob("curate/*/manifest.json"))
    assert json.loads(m2.read_text())["metrics"]["dataset_version"] == metrics["dataset_version"]
    fo.delete_dataset(metrics["dataset_name"])


# ------------------------------------------------------- YOLO: every layout
@pytest.mark.parametrize("layout", make_data.YOLO_LAYOUTS)
def test_yolo_every_layout_delivers_every_box(curate, tmp_path, layout):
    written = make_data.yolo_layout(tmp_path / "y", layout)
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "curate.dedup.enabled=false",
               "curate.split.respect_source=true")
    mt = m["metrics"]
    assert (mt["images_kept"], mt["boxes_kept"]) == (written["images"], written["boxes"]), m["rows"]
    assert mt["boxes_quarantined"] == 0 and mt["classes"] == ["cat", "dog"]
    assert all(mt["splits"][s] > 0 for s in ("train", "val", "test"))  # the split on disk only is read too
    _conserved(m)


def test_yolo_labels_not_found_stops_with_where_cvops_looked(curate, tmp_path):
    from cvops.errors import SourceError

    make_data.yolo_layout(tmp_path / "y", "ultralytics")
    (tmp_path / "y" / "labels").rename(tmp_path / "y" / "annotations")  # no layout puts labels there
    with pytest.raises(SourceError) as e:
        curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}")
    msg = str(e.value)
    assert "no label file was found" in msg and str(tmp_path / "y" / "labels" / "train") in msg
    assert "Ultralytics" in msg and "Roboflow" in msg and "beside" in msg


def test_every_file_is_an_image_or_a_row(curate, tmp_path):
    make_data.yolo_layout(tmp_path / "y", "ultralytics")
    train = tmp_path / "y" / "images" / "train"
    (train / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (train / "Thumbs.db").write_bytes(b"\0" * 8)
    (train / "._a.jpg").write_bytes(b"\0\5\26\7")
    (train / "old.zip").write_bytes(b"PK\5\6" + b"\0" * 18)
    (tmp_path / "y" / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n")
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "curate.dedup.enabled=false")
    rows = {Path(r["file"]).name: (r["kind"], r["reason"]) for r in m["rows"]}
    assert rows["anim.gif"] == ("file", "unsupported file type")
    assert rows["Thumbs.db"] == rows["._a.jpg"] == ("file", "OS metadata file (not data)")
    assert rows["old.zip"] == ("file", "nested archive (not extracted)")
    assert rows["gone.txt"] == ("label", "label file without an image")
    assert m["metrics"]["files_skipped"] == 4 and m["metrics"]["boxes_quarantined"] == 2
    _conserved(m)
