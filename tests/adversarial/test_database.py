"""The right database, always; and artifacts on disk before their manifest.

FiftyOne's embedded database attaches to any running FiftyOne database
service of the same user, whatever its data directory. cvops asks the server
it reached for its ``dbPath`` and stops when it is not the configured one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conftest
from cvops.fo import DatabaseMismatch, _check_embedded


def _client():
    import pymongo

    return pymongo.MongoClient(os.environ["FIFTYONE_DATABASE_URI"], serverSelectionTimeoutMS=5000)


@pytest.mark.skipif(not hasattr(conftest, "MONGOD"), reason="tests were pointed at CVOPS_TEST_DATABASE_URI")
def test_the_data_dir_check_on_a_real_server(tmp_path):
    conn = _client()["fiftyone"]
    _check_embedded(conn, conftest.MONGOD.dbpath)  # the server's own data dir: fine
    with pytest.raises(DatabaseMismatch) as e:
        _check_embedded(conn, tmp_path / "my-datasets")
    msg = str(e.value)
    assert str(conftest.MONGOD.dbpath) in msg and str(tmp_path / "my-datasets") in msg
    assert "FIFTYONE_DATABASE_URI" in msg


@pytest.mark.slow
def test_cvops_refuses_a_foreign_embedded_database(tmp_path):
    """Program A holds an embedded FiftyOne database; cvops configured for another data dir must not use it."""
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DATABASE_URI"}
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            import fiftyone.core.odm.database as fod
            fod.get_db_conn()
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        env={**env, "FIFTYONE_DATABASE_DIR": str(tmp_path / "theirs")}, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = iter(holder.stdout.readline, "")
        assert any(line.strip() == "ready" for line in lines), "the holder could not start its database"
        mine = subprocess.run([sys.executable, "-c", "from cvops.fo import connect; connect()"],
                              env={**env, "FIFTYONE_DATABASE_DIR": str(tmp_path / "mine")}, capture_output=True,
                              text=True, timeout=180)
        assert mine.returncode != 0
        assert "DatabaseMismatch" in mine.stderr and str(tmp_path / "theirs") in mine.stderr, mine.stderr[-3000:]
        assert not (tmp_path / "mine").exists() or not any((tmp_path / "mine").iterdir())
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_every_artifact_file_is_synced_before_the_manifest(tmp_path, monkeypatch):
    from cvops.store import MANIFEST
    from cvops.store import FolderStore

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = FolderStore(tmp_path / "store")
    with store.build("curate", "abc") as b:
        (b.dir / "sub").mkdir()
        for name in ("a.json", "sub/b.bin"):
            (b.dir / name).write_text("x")
        b.commit({"artifacts": {"a": "a.json", "b": "sub/b.bin"}})
    manifest = next(i for i, p in enumerate(synced) if Path(p).name.startswith(f".{MANIFEST}"))
    for name in ("a.json", "sub/b.bin", "sub", ""):
        target = str((b.dir / name).resolve())
        assert target in synced[:manifest], (name, synced)
    assert str(b.dir.resolve()) in synced[manifest + 1:]  # the rename itself is made durable too
