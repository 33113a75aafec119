"""The cache must never serve a curate artifact built from other data than what data.path holds now.

A recipe names its data by path; these tests change what is at the path (add, remove, replace an
image, relabel in place with the file's time put back, swap a COCO json's images folder) and check that
the curate fingerprint, and everything downstream, moves; and that an untouched folder is still cached.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest
from PIL import Image

from cvops.config import compose_config
from cvops.fingerprint import fingerprints
from cvops.runner import Runner
from tests.helpers.make_data import picture, yolo_dataset


def _fps(*overrides):
    cfg = compose_config(["project=stale", "stages=[curate,train]", *overrides])
    return {k: v["fingerprint"] for k, v in fingerprints(cfg).items()}


@pytest.fixture
def yolo(tmp_path):
    root = tmp_path / "yolo"
    yolo_dataset(root, foreign_paths=False)
    return root, ["data=yolo", f"data.path={root / 'data.yaml'}", f"paths.store={tmp_path / 'store'}"]


def test_every_kind_of_change_moves_curate_and_downstream(yolo):
    root, ov = yolo
    base = _fps(*ov)
    assert _fps(*ov) == base  # nothing changed: same fingerprints (reads stat only, no writes)

    def moved(what):
        now = _fps(*ov)
        assert now["curate"] != base["curate"], what
        assert now["train"] != base["train"] and now["evaluate"] != base["evaluate"], what
        return now

    img = root / "train" / "images" / "im21.jpg"
    Image.fromarray(picture(64, 48, 99)).save(root / "train" / "images" / "new.jpg")
    base = moved("an image added")
    (root / "train" / "images" / "new.jpg").unlink()
    base = moved("an image removed")
    Image.fromarray(picture(64, 48, 77)).save(img)
    base = moved("an image replaced")
    label = root / "train" / "labels" / "im21.txt"
    st = label.stat()
    label.write_text(label.read_text().replace("0 0.5", "1 0.5"))  # same size
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its old time: only the content says it changed
    assert label.stat().st_size == st.st_size
    base = moved("a label edited in place, time restored")
    shutil.move(str(root / "test"), str(root.parent / "elsewhere"))
    base = moved("a folder moved away")


def test_coco_images_folder_and_images_root_are_covered(tmp_path):
    ds = tmp_path / "coco"
    (ds / "annotations").mkdir(parents=True)
    (ds / "images").mkdir()
    Image.fromarray(picture(64, 48, 1)).save(ds / "images" / "a.jpg")
    (ds / "annotations" / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]}],
        "categories": [{"id": 1, "name": "x"}]}))
    ov = ["data=coco", f"data.path={ds / 'annotations' / 'train.json'}"]
    before = _fps(*ov)["curate"]
    Image.fromarray(picture(64, 48, 2)).save(ds / "images" / "a.jpg")  # the json is untouched
    assert _fps(*ov)["curate"] != before
    other = tmp_path / "other_images"
    other.mkdir()
    Image.fromarray(picture(64, 48, 3)).save(other / "a.jpg")
    with_root = _fps(*ov, f"data.images_root={other}")["curate"]
    Image.fromarray(picture(64, 48, 4)).save(other / "a.jpg")
    assert _fps(*ov, f"data.images_root={other}")["curate"] != with_root


def test_a_changed_folder_rebuilds_curate_an_unchanged_one_is_cached(yolo, tmp_path):
    import fiftyone as fo

    root, ov = yolo
    project = f"stale{uuid.uuid4().hex[:6]}"

    def run(name):
        cfg = compose_config([f"project={project}", "stages=[curate]", *ov])
        Runner(cfg, tmp_path / "runs" / name).run()
        return json.loads((tmp_path / "runs" / name / "run.json").read_text())["stages"]["curate"]

    try:
        first = run("a")
        assert first["status"] == "ran"
        assert run("b")["status"] == "cached"
        Image.fromarray(picture(64, 48, 55)).save(root / "train" / "images" / "added.jpg")
        (root / "train" / "labels" / "added.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        third = run("c")
        assert third["status"] == "ran" and third["fingerprint"] != first["fingerprint"]
        assert third["metrics"]["images_in"] == first["metrics"]["images_in"] + 1
    finally:
        for name in fo.list_datasets():
            if name.startswith(project):
                fo.delete_dataset(name)


def test_a_linked_folder_counts_and_a_link_loop_ends(yolo):
    """The readers follow folder links, so the data signature does too: a change behind a link moves curate;
    a link back up the tree is walked once, not forever."""
    root, ov = yolo
    outside = root.parent / "more"
    outside.mkdir()
    Image.fromarray(picture(64, 48, 5)).save(outside / "a.jpg")
    os.symlink(outside, root / "train" / "images" / "linked")
    os.symlink(root, root / "train" / "loop")  # a loop: train/loop/train/loop/...
    base = _fps(*ov)
    Image.fromarray(picture(64, 48, 6)).save(outside / "b.jpg")  # behind the link
    assert _fps(*ov)["curate"] != base["curate"]
