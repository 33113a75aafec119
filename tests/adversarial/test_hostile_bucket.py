"""A shared bucket is written by others: a manifest or a data key crafted to make cvops write or read outside
its folders is refused, naming the object, and nothing lands outside (a real S3-compatible server)."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers.s3 import use

from cvops.store import StoreError


@pytest.fixture
def store(s3, monkeypatch, tmp_path):
    use(s3, monkeypatch)
    from cvops.store.s3 import ObjectStore

    return ObjectStore(f"s3://{s3.bucket()}/store", {}, tmp_path / "cache")


def _plant(store, stage, fp, manifest, files=None):
    for rel, data in (files or {}).items():
        store.fs.pipe_file(f"{store.key}/{stage}/{fp}/{manifest.get('build', 'x')}/{rel}", data)
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    store.fs.pipe_file(f"{store.key}/{stage}/{fp}/manifest.json", body)


def _entry(data: bytes):
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("rel", ["../../../escaped.txt", "/tmp/escaped.txt", "a/./b", "a//b", "..", "a\\..\\b"])
def test_a_manifest_file_path_that_leaves_the_cache_is_refused(store, tmp_path, rel):
    data = b"payload"
    m = {"stage": "train", "fingerprint": "aaaa", "build": "0123456789ab", "files": {rel: _entry(data)},
         "artifacts": {}}
    _plant(store, "train", "aaaa", m, {"ok.txt": data})
    with pytest.raises(StoreError, match="leaves the artifact's folder"):
        store.get("train", "aaaa")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.txt"))


@pytest.mark.parametrize("manifest,why", [
    (b"{not json", "corrupt manifest"),
    ([1, 2], "not a JSON object"),
    ({"stage": "train", "fingerprint": "bbbb", "build": "0123456789ab", "files": {}}, "names 'train'/'bbbb'"),
    ({"stage": "train", "fingerprint": "aaaa", "files": {}}, "no 'build' id"),
    ({"stage": "train", "fingerprint": "aaaa", "build": "../../x", "files": {}}, "build id"),
    ({"stage": "train", "fingerprint": "aaaa", "build": "0123456789ab", "files": {"a": {"size": -1, "sha256": "0"}}},
     "size and sha256"),
    ({"stage": "train", "fingerprint": "aaaa", "build": "0123456789ab", "files": {},
      "artifacts": {"checkpoint": "/etc/passwd"}}, "points outside"),
    ({"stage": "train", "fingerprint": "aaaa", "build": "0123456789ab", "files": {},
      "artifacts": {"checkpoint": "../../other/best.pth"}}, "points outside"),
])
def test_malformed_or_foreign_manifests_are_refused_naming_the_object(store, manifest, why):
    _plant(store, "train", "aaaa", manifest)
    with pytest.raises(StoreError) as e:
        store.get("train", "aaaa")
    assert why in str(e.value) and "train/aaaa/manifest.json" in str(e.value)


def test_a_data_key_that_climbs_out_is_refused_before_anything_is_written(store, tmp_path):
    from cvops.curate.inputs import SourceError, fetch

    base = f"{store.key.split('/')[0]}/datasets/evil"
    store.fs.pipe_file(f"{base}/images/a.jpg", b"x")
    store.fs.pipe_file(f"{base}/images/../../../../escaped.txt", b"gotcha")
    keys = store.fs.find(base)
    assert any(".." in k for k in keys), keys  # the server stored the climbing key as it is: the attack is real
    with pytest.raises(SourceError, match="leave the download folder"):
        fetch({"format": "images", "path": f"s3://{base}/images"}, tmp_path / "dl")
    assert not list(tmp_path.rglob("escaped.txt"))
