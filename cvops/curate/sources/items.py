"""What a reader returns: an :class:`Item` per image (or video frame), with its :class:`Box` labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class Box:
    """One labelled box in absolute pixels (top-left x, y, width, height)."""

    label: str
    x: float
    y: float
    w: float
    h: float
    origin: str  # file:line (or file#annotation-id) it came from
    # the instance's segmentation as the file gave it (COCO polygons or RLE, in pixels of the frame the labels
    # were drawn in); checked only when curate.masks is true
    segmentation: Any = None
    mask: Optional[Dict[str, Any]] = None  # after validation: whole-image compressed RLE (cvops.masks)


@dataclass
class Item:
    """One image as a source describes it."""

    path: Path  # image file, or the video for a frame (see frame_index)
    ref: str  # how reports name it: the file, or video#frame
    source: str  # data.format (or sources[i].format) it came from
    boxes: Optional[List[Box]] = None  # None: the source has no labels for it
    declared_size: Optional[Tuple[int, int]] = None  # (w, h) the labels assume
    split: Optional[str] = None  # split the source assigned
    group: Optional[str] = None  # frames of one video share a group
    meta: Dict[str, Any] = field(default_factory=dict)  # video, frame_index, timestamp
    max_pixels: Optional[int] = None  # decode limit (curate.max_pixels); None: validate's default
