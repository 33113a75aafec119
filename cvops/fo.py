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
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

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


def load_dataset(name: str, made_by: Optional[str] = None) -> Any:
    """``fo.load_dataset(name)``, or :class:`DatasetMissing` saying which database was searched.

    Args:
        name: the dataset.
        made_by: what made it (e.g. ``"curate artifact 1a2b..."``), for the message.
    """
    fo = connect()
    if not fo.dataset_exists(name):
        raise DatasetMissing(
            f"FiftyOne dataset '{name}'{f' (made by {made_by})' if made_by else ''} is not in {identity()}. "
            "It was made with another database: point cvops at that one (FIFTYONE_DATABASE_URI or "
            "FIFTYONE_DATABASE_DIR), or rebuild it here with a fresh store (paths.store=...).")
    return fo.load_dataset(name)
