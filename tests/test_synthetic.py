"""The synthetic generator: deterministic, valid labels, negatives, occlusion, videos, shifts."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from cvops.config import compose_config
from cvops.synthetic import Shift, SyntheticSpec, generate, spec_from_config


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".mp4":
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    spec = SyntheticSpec(num_images=40, videos=1, video_frames=12, empty_fraction=0.2, seed=3)
    return out, spec, generate(out, spec, progress=False)


def test_same_seed_same_bytes(small, tmp_path):
    out, spec, _ = small
    generate(tmp_path, spec, progress=False)
    assert _digest(tmp_path) == _digest(out)
    other = tmp_path / "other"
    generate(other, SyntheticSpec(num_images=40, videos=1, video_frames=12, empty_fraction=0.2, seed=4), progress=False)
    assert _digest(other) != _digest(out)


def test_labels_are_valid_coco(small):
    out, spec, summary = small
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(spec.classes)
    assert len(coco["images"]) == 40
    w, h = spec.image_size
    for a in coco["annotations"]:
        x, y, bw, bh = a["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw > 0 and bh > 0
        assert 1 <= a["category_id"] <= len(spec.classes)
    labelled = {a["image_id"] for a in coco["annotations"]}
    assert summary["empty_images"] == 40 - len(labelled) > 0  # negatives exist and are counted
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}
    img = cv2.imread(str(out / coco["images"][0]["file_name"]))
    assert img.shape == (h, w, 3)


def test_occluded_objects_get_visible_boxes(tmp_path):
    summary = generate(tmp_path, SyntheticSpec(num_images=30, max_objects=6, min_size=60, max_size=90, videos=0,
                                               empty_fraction=0, seed=1), progress=False)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    # with big, many shapes, some objects are partly hidden: visible area < box area
    partial = [a for a in coco["annotations"] if a["area"] < 0.5 * a["bbox"][2] * a["bbox"][3]]
    assert partial and summary["boxes"] < 30 * 6


def test_video_frames_and_labels(small):
    out, spec, summary = small
    (video,) = summary["videos"]
    cap = cv2.VideoCapture(video["video"])
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == spec.video_frames
    labels = json.loads(open(video["labels"]).read())
    idx = [im["frame_index"] for im in labels["images"]]
    assert idx == list(range(spec.video_frames))
    assert labels["images"][3]["timestamp"] == pytest.approx(3 / spec.video_fps)
    first = [a["bbox"] for a in labels["annotations"] if a["image_id"] == 1]
    last = [a["bbox"] for a in labels["annotations"] if a["image_id"] == spec.video_frames]
    assert first and last and first != last  # objects move


def test_shift_darkens_and_blurs(tmp_path):
    base = SyntheticSpec(num_images=6, videos=0, seed=2)
    generate(tmp_path / "a", base, progress=False)
    generate(tmp_path / "b", SyntheticSpec(num_images=6, videos=0, seed=2, shift=Shift(brightness=0.4, blur=2.0)),
             progress=False)
    a = cv2.imread(str(tmp_path / "a/images/000000.jpg")).astype(float)
    b = cv2.imread(str(tmp_path / "b/images/000000.jpg")).astype(float)
    assert b.mean() < 0.5 * a.mean()
    sharp = lambda im: cv2.Laplacian(im, cv2.CV_64F).var()  # noqa: E731
    assert sharp(b) < sharp(a)


def test_bad_spec_is_refused_with_the_key():
    with pytest.raises(ValueError, match="data.synthetic.classes"):
        generate("/nonexistent", SyntheticSpec(classes=("circle", "hexagon")), progress=False)
    with pytest.raises(ValueError, match="min_size"):
        generate("/nonexistent", SyntheticSpec(min_size=200, max_size=100), progress=False)


def test_spec_from_the_composed_recipe():
    cfg = compose_config(["recipe=quickstart"])
    spec = spec_from_config(cfg.data.synthetic)
    assert spec.num_images == 400 and spec.videos == 1 and spec.min_size == 32 and spec.image_size == (320, 240)
    assert np.isclose(spec.video_fps, 8.0)
