"""Nothing labelled is lost: dedup keeps differently-labelled near duplicates, datasets are never replaced.

A fixed camera (one scene, objects moved between shots) is the real-world case
that a keep-one-per-cluster dedup destroys: its images are near duplicates of
each other by any perceptual hash, and each carries different labels.
"""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvops.config import compose_config
from cvops.curate import dedup
from cvops.runner import Runner


def fixed_camera(root: Path, shots: int = 10, seed: int = 0) -> dict:
    """One textured scene shot ``shots`` times with 1-3 small objects moved each time (COCO).

    Plus, to be dropped: a byte-identical copy of shot 0 and a re-encoded (JPEG
    quality 60) copy of shot 1 with the same labels; and to be kept: an exact
    pixel copy of shot 2 whose labels differ (a labelling conflict is not a duplicate).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([80 + 60 * np.sin(xx / 23.0), 90 + 50 * np.cos(yy / 17.0), 120 + 40 * np.sin((xx + yy) / 31.0)],
                     -1).astype(np.uint8)
    cv2.rectangle(scene, (200, 40), (300, 200), (20, 30, 40), -1)  # a "building" and a "road" that never move
    cv2.rectangle(scene, (0, 170), (320, 215), (235, 235, 235), -1)
    cv2.circle(scene, (70, 70), 40, (250, 250, 250), -1)
    images, anns, labels = [], [], []
    for i in range(shots):
        img = scene.copy()
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(6, 11))
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            cls = int(rng.integers(1, 3))
            cv2.rectangle(img, (x, y), (x + s, y + s), (230, 40, 40) if cls == 1 else (40, 230, 40), -1)
            boxes.append((cls, [x, y, s, s]))
        cv2.imwrite(str(root / f"shot{i:02d}.png"), img)
        images.append({"id": i + 1, "file_name": f"shot{i:02d}.png", "width": w, "height": h})
        labels.append(boxes)
    (root / "copy_of_shot00.png").write_bytes((root / "shot00.png").read_bytes())
    cv2.imwrite(str(root / "reencoded_shot01.jpg"), cv2.imread(str(root / "shot01.png")), [cv2.IMWRITE_JPEG_QUALITY, 60])
    (root / "relabelled_shot02.png").write_bytes((root / "shot02.png").read_bytes())
    n = shots
    images += [{"id": n + 1, "file_name": "copy_of_shot00.png", "width": w, "height": h},
               {"id": n + 2, "file_name": "reencoded_shot01.jpg", "width": w, "height": h},
               {"id": n + 3, "file_name": "relabelled_shot02.png", "width": w, "height": h}]
    labels += [labels[0], labels[1], [(1, [5, 5, 14, 14])]]
    for image_id, boxes in enumerate(labels, 1):
        for cls, bbox in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cls, "bbox": bbox, "area": 0,
                         "iscrowd": 0})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}))
    return {"json": path, "shots": shots, "boxes": len(anns), "dropped_boxes": len(labels[0]) + len(labels[1])}


def _phash(path: Path) -> int:
    from cvops.curate.validate import phash

    return phash(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY))


@pytest.fixture
def curate(tmp_path):
    """The real curate stage on a real mongod; returns (run.json curate entry, quarantine rows)."""
    import fiftyone as fo

    project = f"t{uuid.uuid4().hex[:8]}"

    def run(*overrides, store=None, name="0"):
        cfg = compose_config([f"project={project}", "stages=[curate]", f"paths.store={store or tmp_path / 'store'}",
                              *overrides])
        run_dir = tmp_path / "runs" / name
        Runner(cfg, run_dir).run()
        m = json.loads((run_dir / "run.json").read_text())["stages"]["curate"]
        rows = list(csv.DictReader(open(Path(m["artifacts"]["dir"]) / "quarantine.csv")))
        return m, rows

    yield run
    for name in fo.list_datasets():
        if name.startswith(project):
            fo.delete_dataset(name)


def test_fixed_camera_keeps_every_differently_labelled_shot_in_one_split(curate, tmp_path):
    import fiftyone as fo

    gen = fixed_camera(tmp_path / "cam")
    shots = sorted((tmp_path / "cam").glob("shot*.png"))
    h0 = _phash(shots[0])
    assert max((h0 ^ _phash(p)).bit_count() for p in shots) <= 4, "the generated shots must be near duplicates"
    m, rows = curate("data=coco", f"data.path={gen['json']}")
    mt = m["metrics"]
    # kept: every shot + the pixel copy with other labels; dropped: the byte copy and the re-encoded copy
    assert mt["images_kept"] == gen["shots"] + 1 and mt["images_deduplicated"] == 2, mt
    assert mt["boxes_kept"] == gen["boxes"] - gen["dropped_boxes"] and mt["boxes_deduplicated"] == gen["dropped_boxes"]
    assert mt["labelled_images_dropped"] == 0
    ds = fo.load_dataset(mt["dataset_name"])
    assert len(set(ds.values("split"))) == 1, "near duplicates must not straddle splits"
    assert mt["cross_split_near_duplicates"] == 0
    dropped = {Path(r["file"]).name: r for r in rows if r["action"] == "dropped"}
    assert set(dropped) == {"copy_of_shot00.png", "reencoded_shot01.jpg"}
    assert dropped["copy_of_shot00.png"]["reason"] == "exact duplicate"
    assert all("same labels" in r["detail"] for r in dropped.values())
    grouped = [r for r in rows if r["action"] == "grouped"]
    assert grouped and all("different labels" in r["reason"] for r in grouped)
    assert any(r["reason"] == "exact duplicate with different labels" for r in grouped)


def test_the_old_rule_is_still_there_when_asked_for_and_says_what_it_lost(curate, tmp_path):
    gen = fixed_camera(tmp_path / "cam")
    m, rows = curate("data=coco", f"data.path={gen['json']}", "curate.dedup.differing_labels=drop")
    assert m["metrics"]["images_kept"] == 1 and m["metrics"]["labelled_images_dropped"] == gen["shots"] + 1  # all but shot 0 and its copy
    assert all("box(es) lost" in r["detail"] for r in rows if r["action"] == "dropped" and "differ" in r["detail"])


# ------------------------------------------------------------- the rule
def _lab(*boxes):
    return [(c, x, y, x + s, y + s) for c, x, y, s in boxes]


def test_equivalence_rule():
    a = _lab(("car", 0.1, 0.1, 0.2), ("dog", 0.5, 0.5, 0.1))
    assert dedup.equivalent(None, None, 0.8) and dedup.equivalent(None, a, 0.8)  # an unlabelled copy adds nothing
    assert not dedup.equivalent(a, None, 0.8)  # an unlabelled image never stands in for a labelled one
    assert dedup.equivalent(list(reversed(a)), a, 0.8)
    assert dedup.equivalent(_lab(("car", 0.101, 0.1, 0.2), ("dog", 0.5, 0.5, 0.1)), a, 0.8)
    assert not dedup.equivalent(_lab(("car", 0.1, 0.1, 0.2)), a, 0.8)  # a box fewer
    assert not dedup.equivalent(_lab(("car", 0.1, 0.1, 0.2), ("car", 0.5, 0.5, 0.1)), a, 0.8)  # other class
    assert not dedup.equivalent(_lab(("car", 0.3, 0.3, 0.2), ("dog", 0.5, 0.5, 0.1)), a, 0.8)  # moved
    assert dedup.equivalent([], [], 0.8) and not dedup.equivalent([], a, 0.8)


def test_deduplicate_prefers_a_labelled_representative_and_groups_the_rest():
    base = 0x0F0F0F0F0F0F0F0F
    hashes = [base, base ^ 1, base ^ 3, base ^ 0xFF00FF00]
    labels = [None, _lab(("car", 0.1, 0.1, 0.2)), _lab(("car", 0.6, 0.6, 0.2)), None]
    d = dedup.deduplicate(["a", "b", "c", "d"], hashes, labels, [0, 1, 2, 3], threshold=4, iou=0.8)
    assert d.dropped == {0: (1, 1, "near duplicate")}  # the unlabelled one goes, not the labelled one
    assert {(i, k) for i, k, _ in d.grouped} == {(2, 1)}  # both labelled versions stay, grouped
    d = dedup.deduplicate(["a", "b", "c", "d"], hashes, labels, [0, 1, 2, 3], 4, 0.8, drop_differing=True)
    assert set(d.dropped) == {0, 2} and not d.grouped
