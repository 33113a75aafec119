"""Property-based fuzz of the annotation readers (Hypothesis, fixed seed).

Structure-aware generation of COCO json, YOLO data.yaml + label lines + split lists, and VOC
xml: random, missing and mistyped fields, duplicate ids, NaN/inf, odd file names (``../``,
absolute, links out of the dataset, NUL bytes, undecodable text). Properties, for every case:

1. only :class:`SourceError` escapes a reader (never another exception);
2. every box in the files is an Item box or counted in the ledger, and validation
   (``check_boxes``) keeps or counts every box it is given;
3. no image path a reader returns resolves outside the dataset root.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvops.curate.sources.coco import read_coco
from cvops.curate.sources.ledger import Ledger, account_files
from cvops.curate.sources.voc import read_voc
from cvops.curate.sources.yolo import read_yolo
from cvops.curate.validate import check_boxes, yolo_boxes
from cvops.errors import SourceError

CASES = {"coco": 700, "yolo": 450, "voc": 450}  # 1,600 in all
W, H = 64, 48


def _settings(n: int) -> Any:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Dict[str, Path]:
    """Dataset roots for each format, and a folder outside them holding files worth stealing."""
    base = tmp_path_factory.mktemp("fuzz")
    outside = base / "outside"
    for rel in ("secret.jpg", "v.mp4", "images/train/x.jpg", "train/images/x.jpg"):
        (outside / rel).parent.mkdir(parents=True, exist_ok=True)
        (outside / rel).write_bytes(b"\xff\xd8 not decoded here")
    (outside / "labels" / "train").mkdir(parents=True)
    (outside / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.2 0.2\n")
    coco = base / "coco"
    for rel in ("a.jpg", "images/a.jpg", "images/b.jpg", "images/sub/c.jpg", "v.mp4"):
        (coco / rel).parent.mkdir(parents=True, exist_ok=True)
        (coco / rel).write_bytes(b"img")
    (coco / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    yolo = base / "yolo"
    for rel in ("images/train/a.jpg", "images/train/b.jpg", "images/train/sub/c.jpg", "images/val/d.jpg",
                "train/images/e.jpg"):
        (yolo / rel).parent.mkdir(parents=True, exist_ok=True)
        (yolo / rel).write_bytes(b"img")
    (yolo / "images" / "train" / "link.jpg").symlink_to(outside / "secret.jpg")
    voc = base / "voc"
    for rel in ("JPEGImages/a.jpg", "JPEGImages/b.jpg", "c.jpg"):
        (voc / rel).parent.mkdir(parents=True, exist_ok=True)
        (voc / rel).write_bytes(b"img")
    (voc / "JPEGImages" / "link.jpg").symlink_to(outside / "secret.jpg")
    return {"base": base, "outside": outside, "coco": coco, "yolo": yolo, "voc": voc}


def _inside(path: Path, root: Path) -> bool:
    real, r = os.path.realpath(path), os.path.realpath(root)
    return real == r or real.startswith(r + os.sep)


def _validate(items: List[Any], ledger: Ledger) -> None:
    """check_boxes keeps or counts every box it is given."""
    for it in items:
        boxes = list(it.boxes or []) + yolo_boxes(it, W, H)
        before = ledger.boxes()
        kept, _ = check_boxes(it, boxes, W, H, None, {}, 1.0, True, ledger)
        assert len(kept) + ledger.boxes() - before == len(boxes)


# ------------------------------------------------------------- strategies
def mostly(common: Any, *rare: Any, odds: int = 3) -> Any:
    """``common`` ``odds`` times as often as each of ``rare`` (``one_of`` merges repeated branches)."""
    return st.integers(0, odds + len(rare) - 1).flatmap(lambda k: common if k < odds else rare[k - odds])


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
NUMS = st.one_of(st.integers(-5, 90), st.floats(allow_nan=True, allow_infinity=True, width=32),
                 st.sampled_from(["12", "abc", "", " 30 ", "1e400", "nan", "-inf"]), JUNK)
IDS = mostly(st.integers(0, 5), st.sampled_from(["1", "2", "x", "", "01"]), st.floats(0, 4), JUNK, odds=4)
TOKENS = st.one_of(st.sampled_from(["0", "1", "2", "-1", "0.5", "0.25", "1.0", "nan", "inf", "-inf", "1e400", "abc",
                                    "", "0x1", "4", "30", "64"]),
                   st.floats(-0.2, 1.2).map(lambda v: f"{v:.3f}"), st.integers(-5, 90).map(str))


def _file_names(tree: Dict[str, Path], root: Path, extra: List[str]) -> Any:
    out = tree["outside"]
    return st.one_of(
        st.sampled_from(extra + ["../outside/secret.jpg", "images/../../outside/secret.jpg", str(out / "secret.jpg"),
                                 "/etc/hostname", "", ".", "..", "\x00x.jpg", "\udcff.jpg", "~/x.jpg", "missing.jpg",
                                 str(root / "images" / "a.jpg"), "images//a.jpg", "./images/b.jpg"]),
        st.text(max_size=10), JUNK)


def coco_docs(tree: Dict[str, Path]) -> Any:
    names = _file_names(tree, tree["coco"], ["a.jpg", "images/a.jpg", "b.jpg", "sub/c.jpg", "images/sub/c.jpg",
                                             "link.jpg", "images/link.jpg"])
    image = st.one_of(
        st.fixed_dictionaries({"id": IDS, "file_name": names}, optional={"width": NUMS, "height": NUMS}),
        st.fixed_dictionaries({"id": IDS, "file_name": names, "width": st.just(W), "height": st.just(H)}),
        st.fixed_dictionaries({}, optional={"id": IDS, "file_name": names, "frame_index": NUMS,
                                            "video": st.sampled_from(["v.mp4", "../outside/v.mp4", "", 3])}),
        JUNK)
    bbox = st.one_of(st.lists(st.floats(-10, 80), min_size=4, max_size=4), st.lists(NUMS, min_size=4, max_size=4),
                     st.lists(NUMS, max_size=6), NUMS)
    ann = st.one_of(
        st.fixed_dictionaries({"image_id": IDS, "category_id": IDS, "bbox": bbox}, optional={"id": IDS}),
        st.fixed_dictionaries({}, optional={"id": IDS, "image_id": IDS, "category_id": IDS, "bbox": bbox}), JUNK)
    cat = st.one_of(st.fixed_dictionaries({"id": IDS}, optional={"name": st.one_of(st.text(max_size=6), NUMS)}),
                    st.fixed_dictionaries({"id": st.integers(0, 3), "name": st.sampled_from(["cat", "dog", "cat"])}),
                    JUNK)
    doc = st.fixed_dictionaries({"images": st.lists(image, max_size=7), "annotations": st.lists(ann, max_size=9),
                                 "categories": st.lists(cat, max_size=4)})
    # mostly well-formed: ids that match, so boxes reach items (and the validation) and collisions happen
    good_names = st.sampled_from(["a.jpg", "images/a.jpg", "b.jpg", "sub/c.jpg", "images/sub/c.jpg", "./b.jpg"])
    near_image = st.fixed_dictionaries({"id": st.integers(1, 4), "file_name": mostly(good_names, names)},
                                       optional={"width": st.sampled_from([W, W, "abc", 0, -3, None]),
                                                 "height": st.sampled_from([H, H, 48.0, float("nan")])})
    near_ann = st.fixed_dictionaries({"id": st.integers(1, 30), "image_id": st.integers(1, 4),
                                      "category_id": st.sampled_from([1, 2, 1, 2, 3]), "bbox": bbox})
    cats = st.one_of(st.just([{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]), st.lists(cat, max_size=3))
    near = st.fixed_dictionaries({"images": st.lists(near_image, min_size=2, max_size=5, unique_by=lambda d: d["id"]),
                                  "annotations": st.lists(near_ann, min_size=1, max_size=10), "categories": cats})
    odd = st.fixed_dictionaries({}, optional={"images": st.one_of(st.lists(image, max_size=3), JUNK),
                                              "annotations": st.one_of(st.lists(ann, max_size=3), JUNK),
                                              "categories": st.one_of(st.lists(cat, max_size=3), JUNK)})
    return mostly(near, doc, doc, odd, JUNK, st.text(max_size=20).map(lambda t: ("raw", t)), odds=6)


def yolo_cases(tree: Dict[str, Path]) -> Any:
    root, out = tree["yolo"], tree["outside"]
    entries = st.sampled_from(["images/train", "images/val", "images", "train.txt", "../outside/images/train",
                               str(out / "images" / "train"), "/home/someone/ds/images/train", "missing", ".", "..",
                               "images/train/a.jpg", "outside.txt", "../train/images", str(root / "images" / "val"),
                               "~"])
    split = mostly(entries, st.lists(entries, min_size=1, max_size=3), st.none(), JUNK)
    names = st.one_of(st.just(["cat", "dog"]), st.just({0: "cat", 1: "dog"}), st.just({"0": "cat", "1": "dog"}),
                      st.lists(st.one_of(st.text(max_size=4), JUNK), max_size=3),
                      st.dictionaries(st.one_of(st.integers(-1, 3), st.sampled_from(["0", "1", "x"]), st.none()),
                                      st.one_of(st.text(max_size=4), JUNK), max_size=3), JUNK)
    path = st.one_of(st.sampled_from([".", "", str(root), str(out), "/home/someone/ds", "..", "~",
                                                 "../outside", "images"]), st.none(), JUNK)
    yaml_doc = st.fixed_dictionaries({"names": names, "train": split}, optional={
        "val": split, "test": split, "path": path, "kpt_shape": st.just([17, 3]), "nc": st.integers(0, 3)})
    unit = st.floats(-0.1, 1.1).map(lambda v: f"{v:.3f}")
    good = st.tuples(st.sampled_from(["0", "1", "1.0", "2"]), unit, unit, unit, unit).map(" ".join)
    line = mostly(good, st.lists(TOKENS, min_size=1, max_size=8).map(" ".join), st.text(max_size=12))
    label = mostly(st.lists(line, min_size=1, max_size=4).map("\n".join), st.none(), st.just(""))
    lists = st.lists(st.sampled_from(["./images/train/a.jpg", str(root / "images" / "train" / "b.jpg"),
                                      "../outside/images/train/x.jpg", str(out / "images" / "train" / "x.jpg"),
                                      "images/val/d.jpg", "missing.jpg", "/home/u/ds/images/train/sub/c.jpg", "",
                                      "# comment", "images/train/link.jpg"]), max_size=5).map("\n".join)
    labels = st.fixed_dictionaries({k: label for k in ("train/a", "train/sub/c", "train/link", "val/d", "orphan")})
    plain = st.fixed_dictionaries({"names": st.just(["cat", "dog"]), "train": split},
                                  optional={"val": split, "path": path})
    return st.tuples(mostly(plain, yaml_doc, yaml_doc, JUNK), labels, lists)


def voc_cases() -> Any:
    printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)  # XML can hold these
    text = st.one_of(TOKENS, st.none(), printable)
    name = st.one_of(st.sampled_from(["car", "person", "", "  "]), st.none(), printable)
    corners = ("xmin", "ymin", "xmax", "ymax")
    coord = st.floats(-5, 80).map(lambda v: f"{v:.1f}")
    box = mostly(st.fixed_dictionaries({k: coord for k in corners}),
                 st.fixed_dictionaries({}, optional={k: text for k in corners}), st.none())
    obj = st.fixed_dictionaries({"name": mostly(st.just("car"), name), "bndbox": box})
    fname = st.one_of(st.sampled_from(["a.jpg", "b.jpg", "c.jpg", "link.jpg", "../../outside/secret.jpg",
                                                  "../outside/secret.jpg", "/etc/hostname", "missing.jpg", "",
                                                  "JPEGImages/../../outside/secret.jpg"]), st.none(), printable)
    doc = st.fixed_dictionaries({"filename": fname, "width": text, "height": text,
                                 "objects": st.lists(obj, min_size=1, max_size=4),
                                 "stem": st.sampled_from(["a", "b", "zz", "link"])})
    return st.lists(mostly(doc, st.text(max_size=20), odds=6), min_size=1, max_size=3)


# ------------------------------------------------------------------- COCO
def _coco_case(tree: Dict[str, Path], doc: Any) -> None:
    root = tree["coco"]
    path = root / "annotations.json"
    path.write_text(doc[1] if isinstance(doc, tuple) else json.dumps(doc), encoding="utf-8", errors="surrogatepass")
    ledger = Ledger()
    try:
        items, _ = read_coco(path, None, "coco", ledger)
    except SourceError:
        return
    assert sum(len(it.boxes) for it in items) + ledger.boxes() == len(doc["annotations"])
    assert all(_inside(it.path, root) for it in items), [str(it.path) for it in items]
    _validate(items, ledger)
    account_files(ledger)


def test_coco_reader_fuzz(tree):
    calls = []

    @_settings(CASES["coco"])
    @given(coco_docs(tree))
    def prop(doc):
        calls.append(1)
        _coco_case(tree, doc)

    t0 = time.perf_counter()
    prop()
    print(f"coco fuzz: {len(calls)} cases in {time.perf_counter() - t0:.1f} s")
    assert len(calls) >= CASES["coco"]


# ------------------------------------------------------------------- YOLO
def _write_yolo(root: Path, doc: Any, labels: Dict[str, Any], listing: str, out: Path) -> None:
    import yaml

    shutil.rmtree(root / "labels", ignore_errors=True)
    for key, text in labels.items():
        if text is not None:
            f = root / "labels" / (key if "/" in key else f"train/{key}")
            f = f.with_suffix(".txt")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
    (root / "train.txt").write_text(listing)
    (root / "outside.txt").write_text(f"{out / 'images' / 'train' / 'x.jpg'}\n../outside/images/train/x.jpg\n")
    (root / "data.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True) if not isinstance(doc, str) else doc)


def _label_lines(root: Path, ledger: Ledger) -> int:
    """Box rows in the label files the reader consumed."""
    n = 0
    for f in (root / "labels").rglob("*.txt"):
        if os.path.realpath(f) in ledger.used:
            n += sum(1 for line in f.read_text(errors="replace").splitlines() if line.strip())
    return n


def _yolo_case(tree: Dict[str, Path], case: Any) -> None:
    root = tree["yolo"]
    doc, labels, listing = case
    _write_yolo(root, doc, labels, listing, tree["outside"])
    ledger = Ledger()
    try:
        items, _ = read_yolo(root / "data.yaml", "yolo", ledger)
    except SourceError:
        return
    in_items = sum(len(it.meta.get("normalized_boxes", [])) for it in items)
    assert in_items + ledger.boxes() == _label_lines(root, ledger)
    assert all(_inside(it.path, root) for it in items), [str(it.path) for it in items]
    _validate(items, ledger)
    before = ledger.boxes()
    account_files(ledger)
    orphans = sum(r["boxes"] for r in ledger.rows if r["reason"] == "label file without an image")
    assert ledger.boxes() - before == orphans


def test_yolo_reader_fuzz(tree):
    calls = []

    @_settings(CASES["yolo"])
    @given(yolo_cases(tree))
    def prop(case):
        calls.append(1)
        _yolo_case(tree, case)

    t0 = time.perf_counter()
    prop()
    print(f"yolo fuzz: {len(calls)} cases in {time.perf_counter() - t0:.1f} s")
    assert len(calls) >= CASES["yolo"]


# -------------------------------------------------------------------- VOC
def _voc_xml(doc: Any) -> str:
    if isinstance(doc, str):
        return doc
    top = ET.Element("annotation")

    def sub(parent: Any, tag: str, text: Any) -> Any:
        el = ET.SubElement(parent, tag)
        if text is not None:
            el.text = str(text)
        return el

    if doc["filename"] is not None:
        sub(top, "filename", doc["filename"])
    size = ET.SubElement(top, "size")
    for k in ("width", "height"):
        if doc[k] is not None:
            sub(size, k, doc[k])
    for o in doc["objects"]:
        obj = ET.SubElement(top, "object")
        if o["name"] is not None:
            sub(obj, "name", o["name"])
        if o["bndbox"] is not None:
            bb = ET.SubElement(obj, "bndbox")
            for k, v in o["bndbox"].items():
                sub(bb, k, v)
    return ET.tostring(top, encoding="unicode")


def _objects_in(xml: Path) -> int:
    """The oracle: <object> elements in a file that parses (none in one that does not)."""
    try:
        return len(ET.parse(xml).getroot().findall("object"))
    except (ET.ParseError, ValueError):
        return 0


def _voc_case(tree: Dict[str, Path], docs: List[Any]) -> None:
    root = tree["voc"]
    shutil.rmtree(root / "Annotations", ignore_errors=True)
    (root / "Annotations").mkdir()
    for i, doc in enumerate(docs):
        stem = doc["stem"] if isinstance(doc, dict) else f"raw{i}"
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(doc), encoding="utf-8", errors="surrogatepass")
    ledger = Ledger()
    try:
        items, _ = read_voc(root, "voc", ledger)
    except SourceError:
        return
    expected = sum(_objects_in(x) for x in (root / "Annotations").glob("*.xml"))
    assert sum(len(it.boxes) for it in items) + ledger.boxes() == expected
    assert all(_inside(it.path, root) for it in items), [str(it.path) for it in items]
    _validate(items, ledger)
    account_files(ledger)


def test_voc_reader_fuzz(tree):
    calls = []

    @_settings(CASES["voc"])
    @given(voc_cases())
    def prop(docs):
        calls.append(1)
        _voc_case(tree, docs)

    t0 = time.perf_counter()
    prop()
    print(f"voc fuzz: {len(calls)} cases in {time.perf_counter() - t0:.1f} s")
    assert len(calls) >= CASES["voc"]
