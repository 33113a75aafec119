"""Videos: the files of a video source, and the frames sampled from each (decoded later, by index)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from cvops.curate.sources.items import Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import Scope, is_dir, is_junk, walk_files
from cvops.media import VIDEO_EXTS


def video_files(root: Path, scope: Optional[Scope] = None, ledger: Optional[Ledger] = None) -> List[Path]:
    if not is_dir(root):
        return [root]
    scope = (scope or Scope()).plus(root)
    if ledger is not None:
        ledger.cover(root, root, scope)
    found = [p for p in walk_files(root, scope, ledger) if p.suffix.lower() in VIDEO_EXTS and not is_junk(p)]
    out = []
    for p in found:
        refused = scope.refusal(p)
        if refused and ledger is not None:
            ledger.add("video", str(p), *refused)
        elif not refused:
            out.append(p)
    return out


def read_video(path: Path, source: str, ledger: Ledger, fps: Optional[float], every_n: Optional[int],
               max_frames: Optional[int], labels: Optional[Dict[int, Item]] = None) -> List[Item]:
    """Frame items sampled from one video (decoded later, by index)."""
    import cv2

    ledger.use(path)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            ledger.add("video", str(path), "the decoder cannot open this video")
            return []
        native = cap.get(cv2.CAP_PROP_FPS) or 0.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if native <= 0 or total <= 0:
        ledger.add("video", str(path), "video reports no frame rate or no frames")
        return []
    step = every_n if every_n else max(1, round(native / fps)) if fps else 1
    items = []
    for f in range(0, total, step):
        if max_frames and len(items) >= max_frames:
            break
        labelled = labels.get(f) if labels else None
        item = Item(path, f"{path}#{f}", source, labelled.boxes if labelled else None,
                    labelled.declared_size if labelled else None, group=str(path),
                    meta={"video": str(path), "frame_index": f, "timestamp": round(f / native, 6)})
        items.append(item)
    return items
