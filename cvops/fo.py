"""FiftyOne access for cvops stages: the right database, always.

:func:`connect` imports fiftyone, makes sure its database is up, and checks
that the MongoDB it reached is the one cvops is configured for:

* with ``FIFTYONE_DATABASE_URI`` (a team's MongoDB, or the tests' private
  one): the server at that URI answers;
* otherwise the embedded mongod: FiftyOne finds a running database by its
  port, not by its data directory, so a mongod started by another program
  (a test run, another checkout) on the default port would silently receive
  this project's datasets. cvops asks the server for its ``dbPath`` and stops
  with :class:`DatabaseMismatch` unless it is ``fo.config.database_dir``.

The embedded mongod is started by the first process that connects; two that
connect at the same moment (a parallel sweep) would both try to start it, so
the first connection is made under a file lock.

Several runs write into one dataset at once (a sweep's jobs evaluate their
models into the dataset of the curate artifact they share). FiftyOne keeps a
dataset's field schema in one document that each process rewrites whole, so
two processes adding fields at the same moment lose one's field ("field
'pred_...' does not exist"). Every write of a stage goes through
:func:`edit_dataset`: a lease held in the same database (so it works for the
processes of one machine and for machines sharing a MongoDB), with the
dataset reloaded under it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

# cvops runs on offline and shared machines: no usage analytics unless the user opts in.
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
_connected = False


class DatabaseMismatch(OSError):
    """The MongoDB that FiftyOne reached is not the one cvops is configured for."""


class DatasetMissing(OSError):
    """A dataset an artifact refers to is not in the database cvops reached."""


def _redact(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def identity() -> str:
    """Which database cvops uses, in words (no password)."""
    import fiftyone as fo

    if fo.config.database_uri:
        return f"MongoDB at {_redact(fo.config.database_uri)} (FIFTYONE_DATABASE_URI)"
    return f"the embedded mongod with data dir {fo.config.database_dir}"


def connect() -> Any:
    """Import fiftyone, bring its database up, check it is the configured one; returns the module.

    Raises:
        DatabaseMismatch: the server reached is another one (or does not answer).
    """
    global _connected
    import fiftyone as fo

    if _connected:
        return fo
    import fiftyone.core.odm.database as fod

    if fo.config.database_uri:
        try:
            fod.get_db_conn().command("ping")
        except Exception as e:
            raise DatabaseMismatch(f"cannot reach {identity()}: {type(e).__name__}: {e}") from e
    else:
        from filelock import FileLock

        db_dir = Path(fo.config.database_dir)
        db_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db_dir.parent / ".cvops-mongod-start.lock"), timeout=300):
            conn = fod.get_db_conn()
        _check_embedded(conn, db_dir)
    _connected = True
    return fo


def _check_embedded(conn: Any, db_dir: Path) -> None:
    try:
        opts = conn.client.admin.command("getCmdLineOpts")
    except Exception as e:  # an old or locked-down server: cannot tell, say so and refuse
        raise DatabaseMismatch(f"cannot ask the MongoDB FiftyOne reached for its data dir ({e}); set "
                               "FIFTYONE_DATABASE_URI to the server you mean") from e
    served = ((opts.get("parsed") or {}).get("storage") or {}).get("dbPath")
    if served is None or os.path.realpath(served) != os.path.realpath(db_dir):
        host, port = conn.client.address or ("?", "?")
        raise DatabaseMismatch(
            f"FiftyOne reached a MongoDB at {host}:{port} whose data dir is {served}, but cvops is configured "
            f"for {db_dir} (fo.config.database_dir / FIFTYONE_DATABASE_DIR). Another program's mongod holds the "
            "port FiftyOne looks for (a test run, another checkout): writing there would lose your datasets. "
            "Stop that program, or set FIFTYONE_DATABASE_URI=mongodb://host:port to use a server on purpose.")


def load_dataset(name: str, made_by: Optional[str] = None, artifact: Optional[Path] = None) -> Any:
    """``fo.load_dataset(name)``, or :class:`DatasetMissing` saying which database was searched.

    Args:
        name: the dataset.
        made_by: what made it (e.g. ``"curate artifact 1a2b..."``), for the message.
        artifact: the folder of the artifact that made it: the message says how to rebuild just that one.
    """
    fo = connect()
    if not fo.dataset_exists(name):
        rebuild = (f"or, if it was deleted, remove that artifact ({artifact}; with an s3:// store also its "
                   "manifest.json in the bucket): the next run rebuilds it (same fingerprint) and keeps every "
                   "other artifact" if artifact is not None else "or rebuild it here with a fresh store (paths.store=...)")
        raise DatasetMissing(
            f"FiftyOne dataset '{name}'{f' (made by {made_by})' if made_by else ''} is not in {identity()}. "
            "It was made with another database: point cvops at that one (FIFTYONE_DATABASE_URI or "
            f"FIFTYONE_DATABASE_DIR), {rebuild}.")
    return fo.load_dataset(name)


#: Seconds a dataset lease lasts without renewal (its holder renews it every third of that while it lives).
LEASE_S = 60.0
#: Seconds a writer waits for another's lease before giving up.
WAIT_S = 3600.0


@contextlib.contextmanager
def dataset_lease(name: str, lease_s: float = LEASE_S, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the write lease of dataset ``name`` (a ``cvops_locks`` document in FiftyOne's database).

    A holder that died leaves a lease that expires after ``lease_s``; a live one renews it. Waiting
    longer than ``wait_s`` raises :class:`TimeoutError` naming the dataset.
    """
    import fiftyone.core.odm.database as fod
    from pymongo.errors import DuplicateKeyError

    connect()
    locks = fod.get_db_conn()["cvops_locks"]
    me, key, t0 = uuid.uuid4().hex, f"dataset:{name}", time.monotonic()
    while True:
        now = time.time()
        try:
            locks.insert_one({"_id": key, "owner": me, "expires": now + lease_s, "host": os.uname().nodename,
                              "pid": os.getpid()})
            break
        except DuplicateKeyError:
            locks.delete_one({"_id": key, "expires": {"$lt": now}})  # its holder stopped renewing: dead
            if time.monotonic() - t0 > wait_s:
                held = locks.find_one({"_id": key}) or {}
                raise TimeoutError(f"FiftyOne dataset '{name}' has been held by another cvops process "
                                   f"(host {held.get('host')}, pid {held.get('pid')}) for over {wait_s:g} s")
            time.sleep(0.1)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                locks.update_one({"_id": key, "owner": me}, {"$set": {"expires": time.time() + lease_s}})
            except Exception as e:  # a database hiccup: try again at the next beat (the lease outlives two misses)
                logging.getLogger(__name__).warning("could not renew the lease of dataset '%s': %s", name, e)

    keeper = threading.Thread(target=renew, name="cvops-dataset-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        locks.delete_one({"_id": key, "owner": me})


@contextlib.contextmanager
def edit_dataset(name: str, made_by: Optional[str] = None, create: bool = False) -> Iterator[Any]:
    """The dataset, reloaded from the database and held for writing (:func:`dataset_lease`).

    Args:
        name: the dataset.
        made_by: what made it, for :class:`DatasetMissing`'s message.
        create: make a persistent dataset of that name when there is none.
    """
    fo = connect()
    with dataset_lease(name):
        if create and not fo.dataset_exists(name):
            ds = fo.Dataset(name, persistent=True)
        else:
            ds = load_dataset(name, made_by)
            ds.reload()  # this process may hold an older copy of its schema
        yield ds
