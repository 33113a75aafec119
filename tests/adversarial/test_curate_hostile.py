"""Curate against hostile inputs, on real files through the real stage (FiftyOne, mongod).

Each attack ends as quarantine rows (or one clear SourceError naming the file and member);
every other input of the same source still arrives, and the counts add up.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_data  # noqa: E402
from test_curate import _conserved, curate  # noqa: E402,F401  (curate: the fixture running the stage)

from cvops.curate.sources.paths import OUTSIDE  # noqa: E402
from cvops.errors import SourceError  # noqa: E402


def _by_reason(m):
    out = {}
    for r in m["rows"]:
        out.setdefault(r["reason"], set()).add(Path(r["file"]).name if "#" not in r["file"] else
                                               Path(r["file"].split("#")[0]).name + "#" + r["file"].split("#")[1])
    return out


def _kept_paths(m):
    import fiftyone as fo

    return fo.load_dataset(m["metrics"]["dataset_name"]).values("original_path")


# -------------------------------------------------------------------- COCO
def test_coco_hostile_entries_are_rows_and_nothing_leaves_the_dataset(curate, tmp_path):
    exp = make_data.coco_hostile(tmp_path / "coco", tmp_path / "outside")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "curate.split.ratios={train:1.0}",
               "curate.dedup.enabled=false")
    mt = m["metrics"]
    for k in ("images_in", "images_kept", "boxes_in", "boxes_kept"):
        assert mt[k] == exp[k], (k, mt, m["rows"])
    got = _by_reason(m)
    for reason, files in exp["rows"].items():
        assert files <= got.get(reason, set()), (reason, got.get(reason))
    assert mt["files_skipped"] == 6  # gif, txt, .DS_Store, ._*, nested zip, the image no annotation lists
    kept = _kept_paths(m)
    assert {Path(p).name for p in kept} == exp["kept"]
    assert all(os.path.realpath(p).startswith(str(tmp_path / "coco") + os.sep) for p in kept)
    dup = next(r for r in m["rows"] if r["reason"] == "duplicate image id")
    assert "went to" in dup["detail"] and dup["detail"].endswith("ok2.png")  # where its annotations went
    _conserved(m)


def test_allow_outside_paths_reads_outside_files(curate, tmp_path):
    make_data.coco_hostile(tmp_path / "coco", tmp_path / "outside")
    m = curate("data=coco", f"data.path={tmp_path / 'coco' / 'annotations.json'}", "data.allow_outside_paths=true",
               "curate.split.ratios={train:1.0}", "curate.dedup.enabled=false")
    assert OUTSIDE not in _by_reason(m)
    secret = str(tmp_path / "outside" / "secret.png")
    assert secret in {os.path.realpath(p) for p in _kept_paths(m)}  # three entries, one file: merged
    _conserved(m)


def test_coco_every_image_outside_is_a_clear_error(curate, tmp_path):
    make_data.coco_hostile(tmp_path / "coco", tmp_path / "outside")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "only_outside.json").write_text(
        '{"images": [{"id": 1, "file_name": "%s"}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}'
        % (tmp_path / "outside" / "secret.png"))
    with pytest.raises(SourceError, match="every image this source names is outside the dataset root"):
        curate("data=coco", f"data.path={tmp_path / 'sub' / 'only_outside.json'}")


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "top level is a list"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' is a dict, not a list"),
    ('{"images": [], "annotations": []}', "no 'categories' list"),
    ("\xff\xfe", "not UTF-8|not valid JSON"),
])
def test_coco_file_that_is_not_coco_names_file_and_field(curate, tmp_path, text, match):
    (tmp_path / "a.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(SourceError, match=match) as e:
        curate("data=coco", f"data.path={tmp_path / 'a.json'}")
    assert str(tmp_path / "a.json") in str(e.value)


# --------------------------------------------------------------------- VOC
def test_voc_malformed_fields_and_escaping_filenames_are_rows(curate, tmp_path):
    make_data.voc_hostile(tmp_path / "voc", tmp_path / "outside")
    m = curate("data=voc", f"data.path={tmp_path / 'voc'}", "curate.split.ratios={train:1.0}",
               "curate.dedup.enabled=false")
    mt, got = m["metrics"], _by_reason(m)
    assert got["malformed <size> in the annotation"] == {"abc.jpg"}
    assert got["bndbox has a non-finite value (NaN or infinity)"] == {"nan.xml#object-1"}
    assert got[OUTSIDE] == {"secret.jpg"} and sum(r["reason"] == OUTSIDE for r in m["rows"]) == 2
    assert (mt["images_in"], mt["images_kept"], mt["boxes_in"], mt["boxes_kept"]) == (5, 2, 5, 1)
    _conserved(m)


# ------------------------------------------------------------------ images
def test_hostile_image_files_are_rows_never_a_crash(curate, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(make_data.picture(40, 30, 70)).save(root / "good.png")
    (root / "eps.jpg").write_bytes(make_data.eps_bytes())  # must never reach Ghostscript
    Image.new("RGB", (8, 8)).save(root / "gif_inside.png", format="GIF")
    make_data.png_header(root / "bomb.png", 30_000, 30_000)  # 900 MP declared, a few bytes of data
    Image.fromarray(make_data.picture(64, 48, 71)).save(root / "big.png")  # over curate.max_pixels below
    (root / "half.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(make_data.picture(40, 30, 72)).save(tmp_path / "elsewhere" / "private.png")
    (root / "linked").symlink_to(tmp_path / "elsewhere")  # a folder link out of the dataset
    m = curate("data=images", f"data.path={root}", "curate.max_pixels=2000")
    got = {Path(r["file"]).name: r["reason"] for r in m["rows"]}
    assert got["eps.jpg"] == "unsupported image format EPS"
    assert got["gif_inside.png"] == "unsupported image format GIF"
    assert got["bomb.png"] in ("image has more pixels than curate.max_pixels",
                               "image has more pixels than Pillow's decompression-bomb limit")
    assert got["big.png"] == "image has more pixels than curate.max_pixels"
    assert got["half.jpg"] == "unreadable or truncated image"
    assert got["pipe.jpg"] == "not a regular file"
    assert got["linked"] == OUTSIDE and "private.png" not in got
    assert m["metrics"]["images_kept"] == 1
    _conserved(m)


def test_decompression_bomb_over_pillows_limit_is_a_row(curate, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(make_data.picture(40, 30, 73)).save(root / "good.png")
    make_data.png_header(root / "bomb.png", 30_000, 30_000)
    m = curate("data=images", f"data.path={root}", "curate.max_pixels=2000000000")  # only Pillow's guard left
    assert {r["reason"] for r in m["rows"]} == {"image has more pixels than Pillow's decompression-bomb limit"}
    assert m["metrics"]["images_kept"] == 1


# ---------------------------------------------------------------- archives
def test_zip_members_corrupt_encrypted_nested_are_rows_and_the_rest_arrives(curate, tmp_path):
    make_data.voc_dataset(tmp_path / "voc")
    bad = make_data.zip_with_bad_members(tmp_path / "voc.zip", tmp_path / "voc")
    m = curate("data=voc", f"data.path={tmp_path / 'voc.zip'}")
    rows = {r["file"].split("!")[-1]: r["reason"] for r in m["rows"] if "!" in r["file"]}
    assert rows["JPEGImages/corrupt.jpg"] == "archive member is corrupt or cannot be extracted"
    assert rows["JPEGImages/locked.jpg"] == "encrypted archive member (not extracted)"
    by_name = {Path(r["file"]).name: r["reason"] for r in m["rows"]}
    assert by_name["nested.zip"] == "nested archive (not extracted)"
    assert by_name["._a.jpg"] == by_name[".DS_Store"] == "OS metadata file (not data)"
    assert set(bad) <= set(rows) | {"nested.zip", "__MACOSX/JPEGImages/._a.jpg", ".DS_Store"}
    assert m["metrics"]["images_kept"] == 2 and m["metrics"]["boxes_kept"] == 4  # the good members
    _conserved(m)


def test_truncated_tar_gz_is_one_error_naming_archive_and_member(curate, tmp_path):
    make_data.voc_dataset(tmp_path / "voc")
    archive = Path(shutil.make_archive(str(tmp_path / "voc"), "gztar", tmp_path / "voc"))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(SourceError, match=r"voc\.tar\.gz: reading stopped at or after member '.+'.*truncated"):
        curate("data=voc", f"data.path={archive}")


def test_tar_with_a_corrupt_header_is_not_read_silently_short(curate, tmp_path):
    make_data.voc_dataset(tmp_path / "voc")
    last = make_data.tar_with_bad_header(tmp_path / "voc.tar", tmp_path / "voc", bad_member=3)
    with pytest.raises(SourceError, match=f"after member '{last}' cannot be read as tar members"):
        curate("data=voc", f"data.path={tmp_path / 'voc.tar'}")


def test_tar_links_are_rows_not_extracted(curate, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    Image.fromarray(make_data.picture(40, 30, 74)).save(root / "a.png")
    with tarfile.open(tmp_path / "t.tar", "w") as t:
        t.add(root / "a.png", "a.png")
        link = tarfile.TarInfo("escape.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/hostname"
        t.addfile(link)
    m = curate("data=images", f"data.path={tmp_path / 't.tar'}")
    assert {r["reason"] for r in m["rows"]} == {"link or special file inside an archive (not extracted)"}
    assert m["metrics"]["images_kept"] == 1


# -------------------------------------------------------------------- YOLO
def test_yolo_paths_outside_the_dataset_are_rows(curate, tmp_path):
    make_data.yolo_layout(tmp_path / "y", "ultralytics")
    make_data.yolo_layout(tmp_path / "other", "roboflow")  # a dataset beside it
    a, b = sorted((tmp_path / "other" / "train" / "images").glob("*.jpg"))[:2]
    (tmp_path / "y" / "extra.txt").write_text(f"{a}\n../other/train/images/{b.name}\n")
    (tmp_path / "y" / "data.yaml").write_text("train: [images/train, extra.txt]\nval: images/val\nnames: [cat, dog]\n")
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "curate.dedup.enabled=false")
    outside = [r for r in m["rows"] if r["reason"] == OUTSIDE]
    assert sorted(Path(r["file"]).name for r in outside) == sorted([a.name, b.name])
    assert all(r["kind"] == "image" for r in outside)
    assert all(str(tmp_path / "other") not in p for p in _kept_paths(m))
    assert m["metrics"]["images_kept"] == 7 and m["metrics"]["boxes_kept"] == 14  # its own: every one
    _conserved(m)


def test_yolo_yaml_path_outside_is_an_error_or_allowed(curate, tmp_path):
    make_data.yolo_layout(tmp_path / "other", "ultralytics")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "data.yaml").write_text(
        f"path: {tmp_path / 'other'}\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    with pytest.raises(SourceError, match="outside the dataset root"):
        curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}")
    m = curate("data=yolo", f"data.path={tmp_path / 'y' / 'data.yaml'}", "data.allow_outside_paths=true",
               "curate.dedup.enabled=false", store=tmp_path / "s2")
    assert m["metrics"]["boxes_kept"] == 14  # train, val and the test split on disk under `path`


def test_coco_in_an_annotations_folder_roots_at_its_parent(curate, tmp_path):
    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    (tmp_path / "outside").mkdir()
    Image.fromarray(make_data.picture(40, 30, 75)).save(root / "images" / "a.png")
    Image.fromarray(make_data.picture(40, 30, 76)).save(tmp_path / "outside" / "b.png")
    (root / "annotations" / "train.json").write_text(
        '{"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "../../outside/b.png"}],'
        ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]},'
        ' {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]}], "categories": [{"id": 1, "name": "a"}]}')
    m = curate("data=coco", f"data.path={root / 'annotations' / 'train.json'}")
    assert m["metrics"]["images_kept"] == 1 and m["metrics"]["boxes_kept"] == 1  # images/ beside annotations/
    (row,) = [r for r in m["rows"] if r["reason"] == OUTSIDE]
    assert row["file"].endswith("b.png") and row["boxes"] == "1"
    _conserved(m)


# ------------------------------------------------- label files as real tools and machines leave them
def _jpeg(path: Path, seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_data.picture(96, 72, seed)).convert(mode).save(path, "PNG" if path.suffix == ".png" else "JPEG")


def test_yolo_label_files_in_any_encoding_and_unreadable_ones_lose_nothing(curate, tmp_path):
    """A BOM (Notepad), UTF-16 (PowerShell's `>`), a 250-byte file name, a list file with a BOM: every box
    arrives. A label file that cannot be read (a link loop; a folder without permission reads the same) or
    lies outside the dataset quarantines its image: a labelled image is never kept as an empty negative."""
    root = tmp_path / "y"
    box = "0 0.5 0.5 0.25 0.25\n0 0.3 0.3 0.1 0.1\n"
    long_stem = "猫" * 82  # 246 bytes: a valid name; cvops' derived names (normalised copy) must still fit
    for i, stem in enumerate(["bom", "utf16", "loop", "outside", long_stem]):
        _jpeg(root / "images/train" / (f"{stem}.png" if stem == long_stem else f"{stem}.jpg"), i,
              "L" if stem == long_stem else "RGB")  # gray: curate writes a normalised RGB copy
    labels = root / "labels/train"
    labels.mkdir(parents=True)
    (labels / "bom.txt").write_bytes(b"\xef\xbb\xbf" + box.encode())
    (labels / "utf16.txt").write_bytes(box.encode("utf-16"))
    os.symlink("loop.txt", labels / "loop.txt")  # stat fails (ELOOP) as it would without permission
    (tmp_path / "elsewhere.txt").write_text(box)
    os.symlink(tmp_path / "elsewhere.txt", labels / "outside.txt")
    (labels / f"{long_stem}.txt").write_text(box)
    _jpeg(root / "images/val/listed.jpg", 9)
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/val/listed.txt").write_text(box)
    (root / "val.txt").write_bytes(b"\xef\xbb\xbf./images/val/listed.jpg\r\n")
    (root / "data.yaml").write_text("train: images/train\nval: val.txt\nnames: [thing]\n")
    m = curate("data=yolo", f"data.path={root / 'data.yaml'}", "curate.dedup.enabled=false")
    mt = m["metrics"]
    assert (mt["images_kept"], mt["boxes_kept"], mt["images_quarantined"]) == (4, 8, 2), (mt, m["rows"])
    assert mt["empty_images"] == 0 and not [r for r in m["rows"] if r["kind"] == "box"], m["rows"]
    got = _by_reason(m)
    assert got["label file cannot be read"] == {"loop.jpg"}
    assert got[f"label file: {OUTSIDE}"] == {"outside.jpg"}
    outside = next(r for r in m["rows"] if r["reason"] == f"label file: {OUTSIDE}")
    assert "data.allow_outside_paths=true" in outside["detail"]
    _conserved(m)


def test_zip_with_utf8_names_but_no_utf8_flag_arrives(curate, tmp_path):
    """Finder and Explorer write UTF-8 member names without the zip's UTF-8 flag; they are not CP437."""
    import json
    import struct
    import zipfile

    src = tmp_path / "src"
    names = ["café.png", "naïve.png", "猫.png", "plain.png"]
    for i, n in enumerate(names):
        _jpeg(src / n, i)
    (src / "annotations.json").write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": 96, "height": 72} for i, n in enumerate(names)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20]} for i in range(4)],
        "categories": [{"id": 1, "name": "cat"}]}, ensure_ascii=False), encoding="utf-8")
    z = tmp_path / "dataset.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, p.name)
    data = bytearray(z.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # clear bit 11 in every local and central header
        i = data.find(sig)
        while i != -1:
            struct.pack_into("<H", data, i + off, struct.unpack_from("<H", data, i + off)[0] & ~0x800)
            i = data.find(sig, i + 4)
    z.write_bytes(bytes(data))
    assert not any(m.flag_bits & 0x800 for m in zipfile.ZipFile(z).infolist())
    m = curate("data=coco", f"data.path={z}", "curate.dedup.enabled=false")
    assert (m["metrics"]["images_kept"], m["metrics"]["boxes_kept"]) == (4, 4), m["rows"]


def test_voc_stale_filename_never_moves_boxes_onto_another_image(curate, tmp_path):
    """a.xml still says <filename>b.jpg</filename> (renamed images, an xml copied as a template): its boxes go to
    neither a.jpg nor b.jpg (quarantined, counted), and b.jpg keeps exactly its own."""
    make_data.voc_dataset(tmp_path / "voc")
    ann = tmp_path / "voc" / "Annotations"
    (ann / "a.xml").write_text((ann / "a.xml").read_text().replace("<filename>a.jpg", "<filename>b.jpg"))
    m = curate("data=voc", f"data.path={tmp_path / 'voc'}", "curate.split.ratios={train:1.0}",
               "curate.dedup.enabled=false")
    row = next(r for r in m["rows"] if r["reason"] == "<filename> names another existing image")
    assert Path(row["file"]).name == "a.xml" and row["boxes"] == "2" and "a.jpg" in row["detail"]
    import fiftyone as fo

    ds = fo.load_dataset(m["metrics"]["dataset_name"])
    boxes = {Path(s.original_path).name: len(s.ground_truth.detections) for s in ds}
    assert boxes == {"b.jpg": 2}, boxes
    _conserved(m)


def test_yolo_labels_beside_images_orphans_are_counted_and_text_files_are_not_boxes(curate, tmp_path):
    """The "beside" layout (x.jpg + x.txt in one folder): a label file without its image is a row with its
    boxes counted; LabelImg's classes.txt is a text file, not boxes; an .mpo (phone camera) image is an image."""
    root = tmp_path / "b"
    _jpeg(root / "train/a.jpg", 1)
    (root / "train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    Image.fromarray(make_data.picture(96, 72, 2)).save(root / "train/cam.mpo", "MPO")
    (root / "train/cam.txt").write_text("0 0.4 0.4 0.2 0.2\n")
    (root / "train/orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.05 0.05\n")
    (root / "train/classes.txt").write_text("thing\n")
    (root / "data.yaml").write_text("train: train\nnames: [thing]\n")
    m = curate("data=yolo", f"data.path={root / 'data.yaml'}", "curate.dedup.enabled=false",
               "curate.split.ratios={train:1.0}")
    mt = m["metrics"]
    assert (mt["images_kept"], mt["boxes_kept"], mt["boxes_in"]) == (2, 2, 4), (mt, m["rows"])
    got = _by_reason(m)
    assert got["label file without an image"] == {"orphan.txt"}
    assert got["text file that is not a YOLO label file"] == {"classes.txt"}
    _conserved(m)


def test_coco_file_names_from_windows_and_macos_resolve_and_near_misses_are_named(curate, tmp_path):
    """`images\\a.png` (written on Windows) and a decomposed (macOS) name find their files; a name that differs
    in case or by %20 is a row that names the file the folder does have."""
    import json
    import unicodedata

    root = tmp_path / "c"
    names = {"win.png": "images\\win.png", "café.png": unicodedata.normalize("NFD", "café.png"),
             "Case.png": "case.PNG", "a b.png": "a%20b.png"}
    for i, disk in enumerate(names):
        _jpeg(root / "images" / disk, i)
    root.joinpath("images", "café.png").rename(root / "images" / unicodedata.normalize("NFC", "café.png"))
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n if "\\" in n else f"images/{n}", "width": 96, "height": 72}
                   for i, n in enumerate(names.values())],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20]} for i in range(4)],
        "categories": [{"id": 1, "name": "cat"}]}), encoding="utf-8")
    m = curate("data=coco", f"data.path={root / 'annotations.json'}", "curate.dedup.enabled=false",
               "curate.split.ratios={train:1.0}")
    assert (m["metrics"]["images_kept"], m["metrics"]["boxes_kept"]) == (2, 2), m["rows"]
    missing = {Path(r["file"]).name: r["detail"] for r in m["rows"] if r["reason"] == "image file missing"}
    assert "'Case.png'" in missing["case.PNG"] and "'a b.png'" in missing["a%20b.png"], missing
    _conserved(m)


def test_a_jpeg_with_too_many_scans_is_a_row_not_minutes_of_cpu(curate, tmp_path):
    import io
    import struct

    from cvops.media import MAX_JPEG_SCANS

    root = tmp_path / "b"
    _jpeg(root / "train/ok.jpg", 1)
    (root / "train/ok.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    buf = io.BytesIO()
    Image.fromarray(make_data.picture(96, 72, 3)).save(buf, "JPEG", progressive=True)
    marks = b"\xff\xda" * (MAX_JPEG_SCANS + 1)  # in a comment segment: as many markers, cheap to build
    data = buf.getvalue()
    (root / "train/scans.jpg").write_bytes(data[:2] + b"\xff\xfe" + struct.pack(">H", len(marks) + 2) + marks + data[2:])
    (root / "train/scans.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("train: train\nnames: [thing]\n")
    m = curate("data=yolo", f"data.path={root / 'data.yaml'}", "curate.dedup.enabled=false",
               "curate.split.ratios={train:1.0}")
    assert m["metrics"]["images_kept"] == 1 and _by_reason(m)["JPEG has too many scans"] == {"scans.jpg"}
    _conserved(m)
