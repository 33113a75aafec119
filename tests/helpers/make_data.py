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
    dup = add_image("copy_of_good.png", seed=1)  # exact copy of good.png
    box(dup, [5, 5, 20, 10])
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "rare"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return {
        "images_in": 6, "images_kept": 2, "images_quarantined": 3, "images_deduplicated": 1,
        "boxes_in": 11, "boxes_kept": 2, "boxes_quarantined": 8, "boxes_deduplicated": 1,
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
