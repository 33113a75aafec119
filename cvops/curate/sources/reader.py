"""One configured source (a :func:`cvops.curate.inputs.iter_sources` entry) -> its items and class names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from cvops.curate.sources.archives import extract, find_in, is_archive
from cvops.curate.sources.coco import read_coco
from cvops.curate.sources.images import read_images
from cvops.curate.sources.items import Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import OUTSIDE, Scope, forget_links
from cvops.curate.sources.video import read_video, video_files
from cvops.curate.sources.voc import read_voc
from cvops.curate.sources.yolo import read_yolo
from cvops.errors import SourceError
from cvops.media import VIDEO_EXTS


def read_source(index: int, src: Dict[str, Any], workdir: Path, ledger: Ledger,
                max_archive_mb: float = 4096) -> Tuple[List[Item], List[str]]:
    """Items of one configured source (``iter_sources`` entry) and the class names it declares.

    An archive is extracted into ``workdir/source/archive-<index>`` first; that folder is then
    the dataset root and every file in it is accounted for.

    Raises:
        SourceError: the path is missing, the format unknown, the source unreadable, or every
            image it names lies outside the dataset root.
    """
    forget_links()  # links may have changed since the last source was read
    fmt = src.get("format")
    path = Path(str(src["path"])).expanduser() if src.get("path") else None
    if fmt != "synthetic":
        if path is None:
            raise SourceError(f"data.path is required for format '{fmt}'")
        if not path.exists():
            raise SourceError(f"data.path={path} does not exist (format {fmt}); check the path or mount")
    scope = Scope(allow_outside=bool(src.get("allow_outside_paths")))
    archive = None
    if path is not None and is_archive(path):
        archive = path
        root = extract(path, workdir / "source" / f"archive-{index}", float(max_archive_mb), ledger=ledger)
        scope = scope.plus(root)
        path = {"coco": lambda: find_in(root, ["*.json"], "COCO .json file"),
                "yolo": lambda: find_in(root, ["data.yaml", "*.yaml"], "YOLO data.yaml")}.get(fmt, lambda: root)()
    n_rows = len(ledger.rows)
    items, names = _read_format(fmt, path, src, index, workdir, ledger, scope)
    if archive is not None:
        ledger.cover(root, archive, scope)
    outside = [r for r in ledger.rows[n_rows:] if r["reason"] == OUTSIDE]
    if not items and outside:
        raise SourceError(f"{path}: every image this source names is outside the dataset root ({len(outside)} "
                          f"quarantined), e.g. {outside[0]['detail']}; point data.path at the dataset's own folder "
                          "or set data.images_root")
    return items, names


def _read_format(fmt: Any, path: Optional[Path], src: Dict[str, Any], index: int, workdir: Path, ledger: Ledger,
                 scope: Scope) -> Tuple[List[Item], List[str]]:
    if fmt == "synthetic":
        from cvops.synthetic import generate, spec_from_config

        out = workdir / "source" / f"synthetic-{index}"
        summary = generate(out, spec_from_config(src["synthetic"]))
        ledger.use(out / "synthetic.json")
        items, _ = read_coco(Path(summary["annotations"]), out, "synthetic", ledger, scope=scope)
        for v in summary["videos"]:
            frames = {it.meta["frame_index"]: it for it in
                      read_coco(Path(v["labels"]), out, "synthetic", ledger, scope=scope)[0]}
            items += read_video(Path(v["video"]), "synthetic", ledger, src.get("fps"), src.get("every_n"),
                                src.get("max_frames"), labels=frames)
        return items, list(src["synthetic"]["classes"])
    assert path is not None
    if fmt == "coco":
        root = Path(str(src["images_root"])).expanduser() if src.get("images_root") else None
        return read_coco(path, root, "coco", ledger, scope=scope)
    if fmt == "yolo":
        return read_yolo(path, "yolo", ledger, scope=scope)
    if fmt == "voc":
        return read_voc(path, "voc", ledger, scope=scope)
    if fmt == "images":
        return read_images(path, "images", ledger, scope=scope), []
    if fmt == "video":
        vids = video_files(path, scope, ledger)
        if not vids:
            raise SourceError(f"data.path={path}: no video files ({' '.join(sorted(VIDEO_EXTS))})")
        items = []
        for v in vids:
            items += read_video(v, "video", ledger, src.get("fps"), src.get("every_n"), src.get("max_frames"))
        return items, []
    raise SourceError(f"data.format='{fmt}' is not a source format; use synthetic, coco, voc, yolo, images or video")
