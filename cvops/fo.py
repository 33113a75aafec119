"""FiftyOne access for cvops stages.

The embedded MongoDB is started by the first process that connects; two
processes that connect at the same moment (a parallel sweep) would both try to
start it on the same data directory and one would fail. :func:`connect` takes
a file lock around the first connection so the second process finds the
running server. With ``FIFTYONE_DATABASE_URI`` (an external MongoDB) the lock
is not needed and not taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# cvops runs on offline and shared machines: no usage analytics unless the user opts in.
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
_connected = False


def connect() -> Any:
    """Import fiftyone and make sure its database is up; returns the module."""
    global _connected
    import fiftyone as fo

    if _connected or os.environ.get("FIFTYONE_DATABASE_URI"):
        _connected = True
        return fo
    from filelock import FileLock

    import fiftyone.core.odm.database as fod

    db_dir = Path(fo.config.database_dir)
    db_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db_dir.parent / ".cvops-mongod-start.lock"), timeout=300):
        fod.get_db_conn()
    _connected = True
    return fo
