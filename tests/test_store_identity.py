"""A store's identity: a copy (``cp -a``) is told apart from a move, and gets its own id on request.

The id names the store's FiftyOne datasets (curated versions, review batches), so two folders
with one id would write into each other's datasets.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest

from cvops.errors import StoreError
from cvops.fo import connect
from cvops.store import FolderStore

SMALL = ["data.synthetic.num_images=6", "data.synthetic.videos=0", "data.synthetic.image_size=[96,64]",
         "data.synthetic.min_size=16", "data.synthetic.max_size=32"]


def test_a_copy_is_refused_a_move_is_followed(tmp_path):
    a = tmp_path / "a"
    ident = FolderStore(a).id
    assert FolderStore(a).id == ident and (a / "store-home").read_text().strip() == str(a)
    shutil.copytree(a, tmp_path / "b", symlinks=True)
    with pytest.raises(StoreError) as e:
        FolderStore(tmp_path / "b").id
    msg = str(e.value)
    assert f"has the id of the store at {a}" in msg and f"cvops store new-id paths.store={tmp_path / 'b'}" in msg
    assert FolderStore(a).id == ident  # the original is untouched
    new = FolderStore(tmp_path / "b").new_id()
    assert new != ident and FolderStore(tmp_path / "b").id == new
    (a).rename(tmp_path / "moved")  # a move keeps the id, and binds it to the new folder
    assert FolderStore(tmp_path / "moved").id == ident
    assert (tmp_path / "moved" / "store-home").read_text().strip() == str(tmp_path / "moved")


def test_new_id_removes_the_copys_curate_artifacts_that_use_the_originals_datasets(cvops, tmp_path):
    project = f"s{uuid.uuid4().hex[:8]}"
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        r = cvops("recipe=quickstart", f"project={project}", f"paths.store={a}", "stages=[curate]", *SMALL,
                  timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        [fp] = [p.name for p in (a / "curate").iterdir() if p.is_dir()]
        curate = {"fingerprint": fp, **json.loads((a / "curate" / fp / "manifest.json").read_text())}
        shutil.copytree(a, b, symlinks=True)
        r = cvops("recipe=quickstart", f"project={project}", f"paths.store={b}", "stages=[curate]", *SMALL,
                  timeout=300)
        assert r.returncode == 2 and "it is a copy" in r.stderr and "cvops store new-id" in r.stderr, r.stderr
        r = cvops("store", "new-id", f"paths.store={b}", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"removed curate {curate['fingerprint']}" in r.stdout
        assert not (b / "curate" / curate["fingerprint"]).exists() and (a / "curate" / curate["fingerprint"]).exists()
        r = cvops("recipe=quickstart", f"project={project}", f"paths.store={b}", "stages=[curate]", *SMALL,
                  timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        [fp] = [p.name for p in (b / "curate").iterdir() if p.is_dir()]
        assert fp == curate["fingerprint"]  # the same data version, curated into the copy's own dataset
        manifest = json.loads((b / "curate" / fp / "manifest.json").read_text())
        assert manifest["metrics"]["dataset_name"] != curate["metrics"]["dataset_name"]
    finally:
        fo = connect()
        for name in fo.list_datasets():
            if name.startswith(project):
                fo.delete_dataset(name)


def test_curate_split_keep_naming_no_dataset_version_is_refused_with_the_fix(cvops, tmp_path):
    r = cvops("recipe=quickstart", f"paths.store={tmp_path / 's'}", "project=keepbad", "stages=[curate]", *SMALL,
              "curate.split.keep=deadbeef00000000", timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "curate.split.keep=deadbeef00000000: no curate artifact" in r.stderr and "cvops models" in r.stderr
