"""Small datasets with known defects, written in each source format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def picture(w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    """A distinct RGB image (random blocks, so perceptual hashes differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.NEAREST))


def coco_with_defects(root: Path) -> Dict[str, object]:
    """A COCO source exercising every quarantine reason. Returns the expectations."""
    img = root / "images"
    img.mkdir(parents=True)
    images: List[dict] = []
    anns: List[dict] = []

    def add_image(name: str, w: int = 64, h: int = 48, seed: int = 0, write: bool = True) -> int:
        if write:
            Image.fromarray(picture(w, h, seed)).save(img / name)
        images.append({"id": len(images) + 1, "file_name": name, "width": w, "height": h})
        return len(images)

    def box(image_id: int, bbox: List[float], cat: int = 1) -> None:
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox})

    good = add_image("good.png", seed=1)
    box(good, [5, 5, 20, 10])
    box(good, [5, 5, 20, 10])  # duplicate annotation row
    box(good, [0, 0, 0, 10])  # zero-area box
    box(good, [100, 100, 10, 10])  # outside the image
    box(good, [50, 40, 30, 30], cat=2)  # partly outside: clipped to 14x8
    box(good, [10, 10, 5, 5], cat=3)  # class 'rare' not in data.classes
    box(good, [10, 10, 5, 5], cat=9)  # unknown category id
    missing = add_image("missing.png", write=False)  # image file missing
    box(missing, [1, 1, 5, 5])
    trunc = add_image("truncated.png", seed=2)
    data = (img / "truncated.png").read_bytes()
    (img / "truncated.png").write_bytes(data[: len(data) // 2])  # truncated
    box(trunc, [1, 1, 5, 5])
    wrong = add_image("wrong_size.png", w=64, h=48, seed=3)
    Image.fromarray(picture(80, 48, 3)).save(img / "wrong_size.png")  # annotation says 64x48
    box(wrong, [1, 1, 5, 5])
    empty = add_image("empty.png", seed=4)  # a negative: kept
    dup = add_image("copy_of_good.png", seed=1)  # exact copy of good.png, with the same labels (so dropped)
    box(dup, [5, 5, 20, 10])
    box(dup, [50, 40, 30, 30], cat=2)
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "rare"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return {
        "images_in": 6, "images_kept": 2, "images_quarantined": 3, "images_deduplicated": 1,
        "boxes_in": 12, "boxes_kept": 2, "boxes_quarantined": 8, "boxes_deduplicated": 2,
        "reasons": {"duplicate annotation row", "zero-area box", "box outside the image", "class not in data.classes",
                    "unknown category_id", "image file missing", "unreadable or truncated image",
                    "image size differs from the annotation", "exact duplicate"},
        "empty": empty,
    }


def colour_modes(root: Path) -> Dict[str, str]:
    """One image per awkward mode; returns file -> PIL mode written."""
    root.mkdir(parents=True, exist_ok=True)
    base = picture(40, 30, 7)
    out = {}
    Image.fromarray(base).convert("CMYK").save(root / "cmyk.jpg")
    out["cmyk.jpg"] = "CMYK"
    rgba = Image.fromarray(picture(40, 30, 12)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    out["rgba.png"] = "RGBA"
    Image.fromarray(picture(40, 30, 8)).convert("P").save(root / "palette.png")
    out["palette.png"] = "P"
    Image.fromarray(picture(40, 30, 9)).convert("L").save(root / "gray.png")
    out["gray.png"] = "L"
    a16 = (picture(40, 30, 10)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(a16).save(root / "deep16.png")
    out["deep16.png"] = "I;16"
    return out


def exif_rotated(path: Path, orientation: int = 6) -> tuple:
    """A 60x40 JPEG stored landscape with an EXIF orientation tag; returns (stored w, h)."""
    im = Image.fromarray(picture(60, 40, 11))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())
    return im.size


def yolo_dataset(root: Path, foreign_paths: bool = True) -> None:
    """YOLO export with absolute paths from another machine, a stray label, a bad line."""
    for split, seeds in (("train", [20, 21, 22]), ("valid", [23]), ("test", [24])):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for s in seeds:
            Image.fromarray(picture(64, 48, s)).save(root / split / "images" / f"im{s}.jpg")
            (root / split / "labels" / f"im{s}.txt").write_text("0 0.5 0.5 0.25 0.25\n1 0.2 0.2 0.1 0.1\n")
    (root / "train" / "labels" / "im20.txt").write_text("0 0.5 0.5 0.25 0.25\nnot a box\n")  # line 2 bad
    (root / "train" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no image
    base = "/home/someone/datasets/cells" if foreign_paths else str(root)
    (root / "data.yaml").write_text(f"train: {base}/train/images\nval: {base}/valid/images\nnc: 2\nnames: ['a', 'b']\n")


def voc_dataset(root: Path) -> None:
    """VOC folder: two images with xml, ImageSets splits, a broken xml, an xml without image."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for n, seed in (("a", 30), ("b", 31)):
        Image.fromarray(picture(64, 48, seed)).save(root / "JPEGImages" / f"{n}.jpg")
        (root / "Annotations" / f"{n}.xml").write_text(
            f"<annotation><filename>{n}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>"
            "<object><name>car</name><bndbox><xmin>4</xmin><ymin>6</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>"
            "<object><name>person</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax><ymax>40</ymax></bndbox></object>"
            "</annotation>")
    (root / "Annotations" / "broken.xml").write_text("<annotation><filename>x.jpg</filename>\n<size>")
    (root / "Annotations" / "lonely.xml").write_text(
        "<annotation><filename>lonely.jpg</filename><object><name>car</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")


# ------------------------------------------------------------- YOLO layouts
YOLO_LAYOUTS = ("ultralytics", "ultralytics_nested_path", "ultralytics_lists", "roboflow", "beside")


def _yolo_image(img: Path, label: Path, seed: int, rows: List[str]) -> int:
    img.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(64, 48, seed)).save(img)
    label.write_text("".join(r + "\n" for r in rows))
    return len(rows)


def yolo_layout(root: Path, layout: str) -> Dict[str, int]:
    """A YOLO dataset in one of :data:`YOLO_LAYOUTS`; returns the images and boxes written.

    Every layout has a split the yaml does not list, and class names as a list or a dict.
    - ultralytics: ``path: <root>`` (absolute), ``images/{train,val}`` <-> ``labels/{train,val}``,
      images in nested subfolders too; ``images/test`` not listed.
    - ultralytics_nested_path: the same under ``path: data`` (relative to the yaml), names a dict.
    - ultralytics_lists: splits as .txt files listing image paths (``./`` relative and absolute).
    - roboflow: ``train: ../train/images`` (Roboflow writes paths relative to a parent), names a
      dict with text keys, ``test/`` on disk only.
    - beside: labels beside the images, ``train: train``, ``val: valid``; ``test/`` on disk only.
    """
    rows = ["0 0.5 0.5 0.25 0.25", "1 0.25 0.3 0.1 0.2"]
    boxes = images = 0
    seed = 100

    def add(img: Path, label: Path, n: int = 2) -> None:
        nonlocal boxes, images, seed
        seed += 1
        images += 1
        boxes += _yolo_image(img, label, seed, rows[:n])

    root.mkdir(parents=True, exist_ok=True)
    if layout in ("ultralytics", "ultralytics_nested_path", "ultralytics_lists"):
        base = root / "data" if layout == "ultralytics_nested_path" else root
        for split, names in (("train", ["a", "b", "sub/c", "sub/deeper/d"]), ("val", ["e", "sub/f"]),
                             ("test", ["g"])):
            for n in names:
                add(base / "images" / split / f"{n}.jpg", base / "labels" / split / f"{n}.txt")
        if layout == "ultralytics":
            yaml = f"path: {root}\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n"
        elif layout == "ultralytics_nested_path":
            yaml = "path: data\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n"
        else:
            train = sorted((base / "images" / "train").rglob("*.jpg"))
            (root / "train.txt").write_text("".join(f"./{p.relative_to(root)}\n" for p in train))
            (root / "val.txt").write_text("".join(f"{p}\n" for p in sorted((base / "images" / "val").rglob("*.jpg"))))
            yaml = "train: train.txt\nval: val.txt\ntest: images/test\nnames: [cat, dog]\n"
    elif layout == "roboflow":
        for split, names in (("train", ["a", "b", "c"]), ("valid", ["d"]), ("test", ["e", "f"])):
            for n in names:
                add(root / split / "images" / f"{n}.jpg", root / split / "labels" / f"{n}.txt")
        yaml = "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {'0': cat, '1': dog}\n"
    elif layout == "beside":
        for split, names in (("train", ["a", "b"]), ("valid", ["c"]), ("test", ["d"])):
            for n in names:
                add(root / split / f"{n}.jpg", root / split / f"{n}.txt", n=1)
        (root / "test" / "images").mkdir()  # the on-disk split of the Roboflow shape
        for n in ("e", "f"):
            add(root / "test" / "images" / f"{n}.jpg", root / "test" / "images" / f"{n}.txt")
        yaml = "train: train\nval: valid\nnames: [cat, dog]\n"
    else:
        raise ValueError(layout)
    (root / "data.yaml").write_text(yaml)
    return {"images": images, "boxes": boxes}


# ---------------------------------------------------------------- hostile
def eps_bytes() -> bytes:
    """A minimal EPS file (what Pillow would hand to Ghostscript)."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
            b"newpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n")


def png_header(path: Path, w: int, h: int) -> None:
    """A PNG whose header declares w x h pixels, with almost no data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) +
                     chunk(b"IEND", b""))


def coco_hostile(root: Path, outside: Path) -> Dict[str, object]:
    """A COCO source attacking the reader; ``outside`` is a folder beside it holding a real image.

    Returns the expectations: images and boxes in, rows by reason, kept image names.
    """
    img = root / "images"
    img.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(64, 48, 50)).save(outside / "secret.png")
    names = {"ok1.png": 51, "ok2.png": 52, "dup_id.png": 53, "bad_size.png": 54, "unlisted.png": 55}
    for n, seed in names.items():
        Image.fromarray(picture(64, 48, seed)).save(img / n)
    (img / "link.png").symlink_to(outside / "secret.png")  # a link resolving outside
    (img / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (img / "notes.txt").write_text("stray")
    (img / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (img / "__MACOSX").mkdir()
    (img / "__MACOSX" / "._ok1.png").write_bytes(b"\0\5\26\7")
    (img / "more.zip").write_bytes(b"PK\5\6" + b"\0" * 18)
    (img / "fake.jpg").write_bytes(eps_bytes())
    images = [
        {"id": 1, "file_name": "ok1.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "ok2.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "dup_id.png", "width": 64, "height": 48},  # id used twice
        {"id": 3, "file_name": "ok1.png", "width": 64, "height": 48},  # same file again: merged
        {"id": 4, "file_name": str(outside / "secret.png")},  # absolute, outside
        {"id": 5, "file_name": "../" + outside.name + "/secret.png"},  # climbs out
        {"id": 6, "file_name": "link.png"},  # link resolving outside
        {"id": 7, "file_name": "bad_size.png", "width": "abc", "height": 48},
        {"id": 8},  # no file_name
        {"file_name": "ok2.png"},  # no id
        "not an object",
        {"id": 9, "file_name": "fake.jpg"},  # EPS named .jpg
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10]},
        {"id": 2, "image_id": 3, "category_id": 2, "bbox": [30, 20, 10, 10]},  # merged into ok1
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10]},  # to ok2 (first with id 2)
        {"id": 4, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]},  # of the outside image: its row
        {"id": 5, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 6, "image_id": 6, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 7, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": ["a", 1, 5, 5]},
        {"id": 10, "image_id": 1, "category_id": 1},  # no bbox
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},  # category without a name
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("inf"), 5]},
        [1, 2, 3],
        {"id": 14, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]},  # of the EPS file
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {
        "images_in": 11, "images_kept": 2, "boxes_in": len(anns), "boxes_kept": 3,
        "kept": {"ok1.png", "ok2.png"},
        "rows": {  # reason -> files (names) it must name
            "path outside the dataset root": {"secret.png", "link.png"},
            "duplicate image id": {"dup_id.png"},
            "image listed twice in 'images' (same file)": {"ok1.png"},
            "image entry has a malformed 'width'/'height'": {"bad_size.png"},
            "image entry without a usable 'file_name'": {"annotations.json#images[8]"},
            "image entry without a usable 'id'": {"ok2.png"},
            "image entry is not an object": {"annotations.json#images[10]"},
            "unsupported image format EPS": {"fake.jpg"},
            "bbox has a non-finite value (NaN or infinity)": {"annotations.json#annotation-8",
                                                             "annotations.json#annotation-12"},
            "bbox is not [x, y, w, h]": {"annotations.json#annotation-9", "annotations.json#annotation-10"},
            "unknown category_id": {"annotations.json#annotation-11"},
            "annotation is not an object": {"annotations.json#annotations[12]"},
            "category entry without an 'id' and a 'name'": {"annotations.json#categories[2]"},
            "image not listed in the annotations": {"unlisted.png"},
            "unsupported file type": {"anim.gif", "notes.txt"},
            "OS metadata file (not data)": {".DS_Store", "._ok1.png"},
            "nested archive (not extracted)": {"more.zip"},
        },
    }


def voc_hostile(root: Path, outside: Path) -> None:
    """VOC folder: a malformed <size>, <filename>s leaving the folder, NaN corners, a good image."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    outside.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(64, 48, 60)).save(outside / "secret.jpg")

    def xml(name: str, filename: str, size: str = "<width>64</width><height>48</height>",
            box: str = "<xmin>4</xmin><ymin>6</ymin><xmax>30</xmax><ymax>20</ymax>") -> None:
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{filename}</filename><size>{size}</size>"
            f"<object><name>car</name><bndbox>{box}</bndbox></object></annotation>")

    for n, seed in (("good", 61), ("abc", 62), ("nan", 63)):
        Image.fromarray(picture(64, 48, seed)).save(root / "JPEGImages" / f"{n}.jpg")
    xml("good", "good.jpg")
    xml("abc", "abc.jpg", size="<width>abc</width><height>48</height>")
    xml("nan", "nan.jpg", box="<xmin>nan</xmin><ymin>6</ymin><xmax>30</xmax><ymax>inf</ymax>")
    xml("climb", f"../../{outside.name}/secret.jpg")
    xml("absolute", str(outside / "secret.jpg"))


def zip_with_bad_members(path: Path, folder: Path) -> Dict[str, str]:
    """Zip ``folder`` and add hostile members: one corrupt (CRC), one marked encrypted, a nested
    zip and macOS metadata. Returns member name -> what it is."""
    import zipfile

    corrupt, locked = "JPEGImages/corrupt.jpg", "JPEGImages/locked.jpg"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
        z.writestr(zipfile.ZipInfo(corrupt), b"\xff\xd8" + bytes(range(256)) * 8)  # stored: no compression
        z.writestr(zipfile.ZipInfo(locked), b"\xff\xd8" + bytes(range(256)) * 8)
        z.writestr("nested.zip", b"PK\5\6" + b"\0" * 18)
        z.writestr("__MACOSX/JPEGImages/._a.jpg", b"\0\5\26\7")
        z.writestr(".DS_Store", b"\0\0\0\1Bud1")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        start_dir = z.start_dir
    start = infos[corrupt].header_offset + 30 + len(corrupt)
    data[start + 100] ^= 0xFF  # flips a byte of the stored data: the CRC check fails on reading
    off = infos[locked].header_offset
    data[off + 6] |= 1  # general purpose flag bit 0 (encrypted), local header ...
    central = data.find(b"PK\1\2", start_dir)  # central directory records
    while central >= 0:
        name_len = int.from_bytes(data[central + 28:central + 30], "little")
        if bytes(data[central + 46:central + 46 + name_len]) == locked.encode():
            data[central + 8] |= 1  # ... and central directory record
        central = data.find(b"PK\1\2", central + 4)
    path.write_bytes(bytes(data))
    return {corrupt: "corrupt", locked: "encrypted", "nested.zip": "nested archive",
            "__MACOSX/JPEGImages/._a.jpg": "junk", ".DS_Store": "junk"}


def tar_with_bad_header(path: Path, folder: Path, bad_member: int = 2) -> str:
    """An uncompressed tar of ``folder`` whose ``bad_member``-th header is overwritten with
    garbage (tarfile's iteration stops there without an error). Returns the last good member."""
    import tarfile

    with tarfile.open(path, "w") as t:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            t.add(f, f.relative_to(folder).as_posix())
    with tarfile.open(path) as t:
        members = t.getmembers()
    data = bytearray(path.read_bytes())
    off = members[bad_member].offset
    data[off:off + 512] = b"\x7fgarbage" * 64
    path.write_bytes(bytes(data))
    return members[bad_member - 1].name
