"""Seeded synthetic detection data: the quickstart's and the tests' dataset.

:func:`generate` writes, under ``out_dir``::

    images/000000.jpg ...            still images
    annotations.json                 COCO detection json for them
    videos/video_000.mp4 ...         short videos of moving shapes
    videos/video_000.json            COCO json per video: one image entry per
                                     frame with video, frame_index, timestamp
    synthetic.json                   the parameters used (same seed -> same bytes)

Objects are filled shapes (one class per shape) with random colours, sizes
and positions on textured backgrounds (smooth noise, stripes, gradients).
Later shapes may occlude earlier ones; each box is the tight box of what is
still visible, and objects less than a quarter visible are not labelled.
A fraction of images has no object at all (negatives).

``shift`` produces the same scenes under a distribution shift (darker, blurred,
noisier, unseen background style) for monitoring tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cvops.schema import SyntheticConfig

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
BACKGROUNDS = ("noise", "stripes", "gradient")
MIN_VISIBLE = 0.25


@dataclass
class Shift:
    """A distribution shift applied to generated pixels (identity by default)."""

    brightness: float = 1.0  # multiply pixel values
    blur: float = 0.0  # Gaussian sigma in px
    noise: float = 0.0  # additive Gaussian noise, std in grey levels
    background: Optional[str] = None  # force one style, e.g. "checker" (unseen in training)

    def is_identity(self) -> bool:
        return self == Shift()


@dataclass
class SyntheticSpec(SyntheticConfig):
    """What to generate: the ``data.synthetic`` keys (:class:`cvops.schema.SyntheticConfig`) plus a shift."""

    shift: Shift = field(default_factory=Shift)


def _check(spec: SyntheticSpec) -> None:
    unknown = [c for c in spec.classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"data.synthetic.classes: unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    if not spec.classes:
        raise ValueError("data.synthetic.classes is empty; name at least one shape")
    w, h = spec.image_size
    if not (16 <= spec.min_size <= spec.max_size <= min(w, h)):
        raise ValueError(
            f"data.synthetic sizes must satisfy 16 <= min_size ({spec.min_size}) <= max_size ({spec.max_size}) "
            f"<= min(image_size) ({min(w, h)})"
        )
    if not 0.0 <= spec.empty_fraction <= 1.0:
        raise ValueError(f"data.synthetic.empty_fraction={spec.empty_fraction} must be within [0, 1]")


# ------------------------------------------------------------------ pixels
def _background(rng: np.random.Generator, w: int, h: int, style: str) -> np.ndarray:
    import cv2

    base = rng.uniform(40, 215, size=3)
    if style == "noise":
        small = rng.normal(0, 1, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
        field_ = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = base + 30 * field_
    elif style == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(8, 30)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        img = base + 25 * wave[..., None] * rng.uniform(0.5, 1.0, size=3)
    elif style == "gradient":
        other = rng.uniform(40, 215, size=3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = np.broadcast_to(base * (1 - t) + other * t, (h, w, 3)).copy()
    elif style == "checker":
        yy, xx = np.mgrid[0:h, 0:w]
        cell = int(rng.integers(10, 24))
        img = np.where(((yy // cell + xx // cell) % 2)[..., None] == 0, base, 255 - base).astype(np.float32)
    else:
        raise ValueError(f"unknown background style '{style}'; choose from {list(BACKGROUNDS) + ['checker']}")
    img = img + rng.normal(0, 6, size=img.shape)  # sensor-like grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, w: int, h: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    import cv2

    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    if shape == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif shape == "diamond":
        pts = [(0, -r), (r * 0.7, 0), (0, r), (-r * 0.7, 0)]
    elif shape == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        pts = [((r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    elif shape == "cross":
        a = r / 3
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    else:
        raise ValueError(shape)
    c, s = math.cos(angle), math.sin(angle)
    poly = np.array([[cx + x * c - y * s, cy + x * s + y * c] for x, y in pts], np.float32)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


@dataclass
class _Obj:
    cls: int
    x: float
    y: float
    size: float
    angle: float
    color: Tuple[int, int, int]
    vx: float = 0.0
    vy: float = 0.0
    va: float = 0.0


def _render(bg: np.ndarray, objs: List[_Obj], classes: Sequence[str], shift: Shift,
            rng: np.random.Generator, masks: bool = False) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    import cv2

    h, w = bg.shape[:2]
    img = bg.copy()
    owner = np.full((h, w), -1, np.int32)  # which object is visible at each pixel
    areas = []
    for i, o in enumerate(objs):
        m = _shape_mask(classes[o.cls], w, h, o.x, o.y, o.size, o.angle)
        areas.append(int(m.sum()))
        img[m] = o.color
        owner[m] = i
    if shift.blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), shift.blur)
    img = img.astype(np.float32) * shift.brightness
    if shift.noise > 0:
        img = img + rng.normal(0, shift.noise, size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    anns = []
    for i, o in enumerate(objs):
        ys, xs = np.nonzero(owner == i)
        if areas[i] == 0 or len(xs) < MIN_VISIBLE * areas[i]:
            continue  # (almost) fully occluded or outside the frame: not labelled
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append({"category_id": o.cls + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(len(xs)), "iscrowd": 0})
        if masks:  # the visible part only: what a person would outline
            from cvops.masks import encode

            anns[-1]["segmentation"] = encode(owner == i)
    return img, anns


def _objects(rng: np.random.Generator, spec: SyntheticSpec, w: int, h: int, n: int) -> List[_Obj]:
    objs: List[_Obj] = []
    tries = 0
    while len(objs) < n and tries < 50 * max(n, 1):
        tries += 1
        size = float(rng.uniform(spec.min_size, spec.max_size))
        x, y = float(rng.uniform(size / 2, w - size / 2)), float(rng.uniform(size / 2, h - size / 2))
        if not spec.occlusion and any(abs(x - o.x) < (size + o.size) / 2 and abs(y - o.y) < (size + o.size) / 2 for o in objs):
            continue
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        objs.append(_Obj(int(rng.integers(len(spec.classes))), x, y, size, float(rng.uniform(0, 2 * math.pi)), color))
    return objs


def _coco(classes: Sequence[str]) -> Dict[str, Any]:
    return {
        "info": {"description": "cvops synthetic shapes"},
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)],
        "images": [],
        "annotations": [],
    }


def _add(coco: Dict[str, Any], file_name: str, w: int, h: int, anns: List[Dict[str, Any]], **extra: Any) -> None:
    image_id = len(coco["images"]) + 1
    coco["images"].append({"id": image_id, "file_name": file_name, "width": w, "height": h, **extra})
    for a in anns:
        coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, **a})


# ------------------------------------------------------------------- public
def generate(out_dir: Path | str, spec: Optional[SyntheticSpec] = None, progress: bool = True) -> Dict[str, Any]:
    """Write the synthetic dataset described by ``spec`` into ``out_dir``.

    Args:
        out_dir: folder to write into (created).
        spec: what to generate; the same spec gives the same files.
        progress: show a progress bar.

    Returns:
        A summary: paths of ``annotations.json`` and of each video and its labels,
        and image/box/empty counts.
    """
    import cv2
    from cvops.console import track

    spec = spec or SyntheticSpec()
    _check(spec)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in spec.image_size)
    rng = np.random.default_rng(spec.seed)
    styles = [spec.shift.background] if spec.shift.background else list(BACKGROUNDS)
    coco = _coco(spec.classes)
    n_empty = 0
    for i in track(range(spec.num_images), "synthetic images", enabled=progress):
        bg = _background(rng, w, h, styles[int(rng.integers(len(styles)))])
        empty = rng.random() < spec.empty_fraction
        objs = [] if empty else _objects(rng, spec, w, h, int(rng.integers(1, spec.max_objects + 1)))
        img, anns = _render(bg, objs, spec.classes, spec.shift, rng, spec.masks)
        n_empty += not anns
        name = f"images/{i:06d}.jpg"
        cv2.imwrite(str(out / name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        _add(coco, name, w, h, anns)
    (out / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")

    videos = []
    for v in range(spec.videos):
        videos.append(_video(out, v, spec, rng, styles, w, h, progress))
    summary = {
        "annotations": str(out / "annotations.json"),
        "images": spec.num_images,
        "boxes": len(coco["annotations"]),
        "empty_images": n_empty,
        "videos": videos,
        "classes": list(spec.classes),
    }
    spec_dict = asdict(spec)
    spec_dict["classes"] = list(spec.classes)
    portable = json.loads(json.dumps(summary).replace(json.dumps(str(out))[1:-1] + "/", ""))  # paths relative to out_dir
    (out / "synthetic.json").write_text(json.dumps({"spec": spec_dict, "summary": portable}, indent=2), encoding="utf-8")
    return summary


def _video(out: Path, index: int, spec: SyntheticSpec, rng: np.random.Generator, styles: List[str],
           w: int, h: int, progress: bool) -> Dict[str, Any]:
    import cv2
    from cvops.console import track

    (out / "videos").mkdir(parents=True, exist_ok=True)
    name = f"videos/video_{index:03d}"
    bg = _background(rng, w, h, styles[int(rng.integers(len(styles)))])
    objs = _objects(rng, spec, w, h, max(1, spec.max_objects))
    for o in objs:  # a few px per frame, some spin
        speed, heading = rng.uniform(2, 6), rng.uniform(0, 2 * math.pi)
        o.vx, o.vy, o.va = speed * math.cos(heading), speed * math.sin(heading), float(rng.uniform(-0.1, 0.1))
    writer = cv2.VideoWriter(str(out / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), spec.video_fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {out / name}.mp4 (no mp4v encoder in this OpenCV build)")
    coco = _coco(spec.classes)
    try:
        for f in track(range(spec.video_frames), f"synthetic video {index}", enabled=progress):
            frame_bg = np.clip(bg.astype(np.int16) + rng.integers(-3, 4, size=bg.shape), 0, 255).astype(np.uint8)
            img, anns = _render(frame_bg, objs, spec.classes, spec.shift, rng, spec.masks)
            writer.write(img[..., ::-1])
            _add(coco, f"{name}.mp4#{f}", w, h, anns, video=f"{name}.mp4", frame_index=f,
                 timestamp=round(f / spec.video_fps, 6))
            for o in objs:  # move, bouncing off the borders
                o.x += o.vx
                o.y += o.vy
                o.angle += o.va
                if not o.size / 2 <= o.x <= w - o.size / 2:
                    o.vx = -o.vx
                if not o.size / 2 <= o.y <= h - o.size / 2:
                    o.vy = -o.vy
    finally:
        writer.release()
    (out / f"{name}.json").write_text(json.dumps(coco), encoding="utf-8")
    return {"video": str(out / f"{name}.mp4"), "labels": str(out / f"{name}.json"),
            "frames": spec.video_frames, "boxes": len(coco["annotations"])}


def spec_from_config(cfg: Any, shift: Optional[Shift] = None) -> SyntheticSpec:
    """Build a :class:`SyntheticSpec` from the ``data.synthetic`` config node."""
    from omegaconf import OmegaConf

    import dataclasses

    d = (OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg)
         else dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))
    d["image_size"] = tuple(d["image_size"])
    d["classes"] = tuple(d["classes"])
    return SyntheticSpec(**d, shift=shift or Shift())
