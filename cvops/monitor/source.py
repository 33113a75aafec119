"""What a monitor window will read, as a cheap signature (stdlib only: computed for every command).

The monitor's result depends on data outside the recipe: the serve request
log, a folder, a video. The runner adds :func:`signature` to the monitor's
fingerprint, so new traffic (or a changed folder) means a new monitor run,
while an unchanged source is reused from the cache like any other stage.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, List

from cvops.media import IMAGE_EXTS, VIDEO_EXTS
from cvops.requestlog import request_log_dir


def _stat_lines(paths: List[Path]) -> List[str]:
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append(f"{p}\t{st.st_size}\t{st.st_mtime_ns}")
    return out


def signature(config: Any, store_root: Path) -> str:
    """Size + mtime of every file the window could read ("" for generated windows).

    ``config`` is the monitor's typed view (``monitor``, ``serve.log_dir``, ``project``).
    """
    src = config.monitor.source
    if src == "synthetic":
        return ""
    if src is None:
        root = request_log_dir(config.serve.log_dir, store_root, config.project)
        files = sorted(root.glob("requests*.jsonl")) if root.is_dir() else []
    else:
        root = Path(str(src)).expanduser()
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = sorted(Path(d) / f for d, _, fs in os.walk(root) for f in fs
                           if Path(f).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
        else:
            files = []
    return hashlib.sha256("\n".join([str(root), *_stat_lines(files)]).encode()).hexdigest()[:16]
