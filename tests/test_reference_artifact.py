"""The monitor's reference profile is an artifact of the store (``<store>/reference/<fingerprint>/``, manifest
written last), keyed through :mod:`cvops.fingerprint` like a stage: built once, then read, on a folder store and
across machines of an ``s3://`` store; housekeeping keeps it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.s3 import use

from cvops.drift import profile
from cvops.store import FolderStore
from cvops.store.housekeeping import gc


@pytest.fixture
def held_out(tmp_path):
    """A COCO file of six small images (the curated val split)."""
    import cv2

    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        p = tmp_path / "images" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
        images.append({"id": i, "file_name": str(p), "width": 128, "height": 96})
    coco = tmp_path / "coco_val.json"
    coco.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return [coco]


def _no_model(*a, **k):
    raise AssertionError("the reference was computed again instead of read from the store")


def test_built_once_as_a_committed_artifact_then_read(tmp_path, model_path, held_out, monkeypatch):
    store = FolderStore(tmp_path / "store")
    prof, seen, d = profile.reference(store, "e" * 16, model_path, held_out, 0.3)
    fp = profile.reference_fingerprint("e" * 16, 0.3)
    assert d == store.dir(profile.REFERENCE, fp) and len(seen) == 6
    art = store.get(profile.REFERENCE, fp)
    assert art.manifest["inputs"] == {"export": "e" * 16} and art.manifest["config"] == {"low_confidence": 0.3}
    assert art.manifest["code"] == profile.reference_code() and art.metrics["images"] == 6
    monkeypatch.setattr(profile, "OnnxDetector", _no_model)
    again, seen2, _ = profile.reference(store, "e" * 16, model_path, held_out, 0.3)
    assert [s.name for s in seen2] == [s.name for s in seen]
    assert np.allclose(again.features["brightness"], prof.features["brightness"])
    assert gc(store, [profile.REFERENCE], grace_s=0).garbage == []  # committed: housekeeping keeps it
    with pytest.raises(AssertionError, match="computed again"):  # another low_confidence is another profile
        profile.reference(store, "e" * 16, model_path, held_out, 0.25)


def test_an_s3_store_shares_it_between_machines(tmp_path, model_path, held_out, s3, monkeypatch):
    from cvops.store.s3 import ObjectStore

    use(s3, monkeypatch)
    url = f"s3://{s3.bucket()}/team/store"
    _, seen, _ = profile.reference(ObjectStore(url, {}, tmp_path / "cache-a"), "e" * 16, model_path, held_out, 0.3)
    monkeypatch.setattr(profile, "OnnxDetector", _no_model)
    b = ObjectStore(url, {}, tmp_path / "cache-b")  # machine B: fetched from the bucket, not recomputed
    _, seen_b, d = profile.reference(b, "e" * 16, model_path, held_out, 0.3)
    assert d.is_relative_to(tmp_path / "cache-b") and [s.record for s in seen_b] == [s.record for s in seen]
