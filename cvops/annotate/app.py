"""The review dataset made ready for the FiftyOne App's annotation panel (``annotate.backend=app``).

FiftyOne 1.22 edits labels in the App when a field has a *label schema* and the
schema is active. :func:`prepare` gives the review field one (the project's
classes, as a radio or dropdown) and fills it where it is empty from the
prelabels a reviewer would accept (:func:`cvops.annotate.labels.accept`), so a
person corrects boxes instead of drawing them all:

- detection: ``ground_truth`` (``Detections``), boxes;
- instance segmentation: ``outlines`` (``Polylines``, closed and filled), one
  polyline per instance traced from its mask; ``cvops review`` fills them back
  into masks (:func:`cvops.annotate.labels.polygons_to_mask`).

The reviewer then tags the sample ``reviewed`` in the App; ``cvops review``
exports it. Samples already tagged ``reviewed`` or ``rejected`` are not touched,
nor is a field a person has filled.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from cvops.annotate.labels import Box, accept, clip, mask_to_polygons

#: The field a detection reviewer edits, and a segmentation reviewer's outlines.
BOXES, OUTLINES = "ground_truth", "outlines"
PRELABELS = "prelabels"
#: Where a filled field came from (a sample field): "prelabels" until a person saves an edit.
FILLED_FROM = "filled_from"


def review_field(masks: bool) -> str:
    """The field a reviewer edits in this project."""
    return OUTLINES if masks else BOXES


def ensure_review_field(ds: Any, masks: bool) -> str:
    """The review field on ``ds`` (added when missing); its name.

    Raises:
        ReviewError: a field of that name holds other labels.
    """
    from cvops.annotate.review import ReviewError
    from cvops.fo import connect

    fo = connect()
    field = review_field(masks)
    kind = fo.Polylines if masks else fo.Detections
    schema = ds.get_field_schema()
    if field not in schema:
        ds.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=kind)
    elif getattr(schema[field], "document_type", None) is not kind:
        raise ReviewError(f"review dataset '{ds.name}': field '{field}' holds "
                          f"{getattr(schema[field], 'document_type', schema[field]).__name__}, not "
                          f"{kind.__name__}; rename it, it is the field reviewers edit")
    return field


def prepare(dataset_name: str, classes: Sequence[str], *, masks: bool, confidence: float,
            duplicate_iou: float, max_samples: Optional[int] = None) -> Dict[str, Any]:
    """Give the review field an active label schema and fill it from the accepted prelabels.

    Returns:
        ``{"dataset", "field", "samples", "filled", "kept", "done"}``: samples in the
        dataset; empty fields filled from prelabels; fields a person had set, left
        alone; samples already ``reviewed`` or ``rejected``.
    """
    from cvops.fo import connect, edit_dataset
    from cvops.annotate.review import REJECTED_TAG, REVIEWED_TAG, ReviewError

    fo = connect()
    if not fo.dataset_exists(dataset_name):
        raise ReviewError(f"review dataset '{dataset_name}' does not exist: this store has no edge cases yet; the "
                          "monitor stage puts them there (stages=[monitor])")
    filled = kept = done = 0
    with edit_dataset(dataset_name) as ds:
        field = ensure_review_field(ds, masks)
        schema = ds.get_field_schema()
        if FILLED_FROM not in schema:
            ds.add_sample_field(FILLED_FROM, fo.StringField)
        ds.default_classes = list(classes)
        open_view = ds.match_tags([REVIEWED_TAG, REJECTED_TAG], bool=False)
        todo = open_view.exists(field, False)
        if max_samples is not None:
            todo = todo.limit(int(max_samples))
        done = len(ds) - len(open_view)
        kept = len(open_view) - len(open_view.exists(field, False))
        if PRELABELS in schema and len(todo):
            ids, pre, meta, paths = todo.values(["id", PRELABELS, "metadata", "filepath"])
            values = {}
            for sid, p, m, fp in zip(ids, pre, meta, paths):
                values[sid] = _fill(fo, p, m, fp, masks, confidence, duplicate_iou)
            todo.set_values(field, values, key_field="id")
            todo.set_values(FILLED_FROM, {sid: PRELABELS for sid in ids}, key_field="id")
            filled = len(ids)
        _schema(ds, field, classes)
        total = len(ds)
    return {"dataset": dataset_name, "field": field, "samples": total, "filled": filled, "kept": kept,
            "done": done}


def _schema(ds: Any, field: str, classes: Sequence[str]) -> None:
    """The field's label schema (the project's classes to choose from), first among the active ones."""
    schema = ds.generate_label_schemas(field, scan_samples=False)
    schema = dict(schema.get(field, schema))  # one field asked: some releases return it bare
    schema.update(component="radio" if len(classes) <= 5 else "dropdown", classes=list(classes))
    schema.pop("default", None)
    current = ds.label_schemas
    current[field] = schema
    ds.set_label_schemas(current)
    ds.active_label_schemas = [field, *[f for f in ds.active_label_schemas if f != field]]


def _fill(fo: Any, prelabels: Any, meta: Any, filepath: str, masks: bool, confidence: float,
          duplicate_iou: float) -> Any:
    """The accepted prelabels as the review field's labels (relative coordinates)."""
    from cvops.annotate.review import boxes_of, image_size

    w, h = image_size(filepath, meta)
    boxes: List[Box] = accept(clip(boxes_of(prelabels, w, h)[0], w, h), confidence, duplicate_iou) \
        if prelabels else []
    if not masks:
        return fo.Detections(detections=[
            fo.Detection(label=b.label, bounding_box=[b.xywh[0] / w, b.xywh[1] / h, b.xywh[2] / w, b.xywh[3] / h],
                         confidence=b.score) for b in boxes])
    from cvops import masks as rle

    lines = []
    for b in boxes:
        if b.segmentation is None:  # a box without a mask: its outline is the box
            x, y, bw, bh = b.xywh
            polys = [[(x, y), (x + bw - 1, y), (x + bw - 1, y + bh - 1), (x, y + bh - 1)]]
        else:
            polys = mask_to_polygons(rle.decode(b.segmentation))
        if polys:
            lines.append(fo.Polyline(label=b.label, points=[[(px / w, py / h) for px, py in p] for p in polys],
                                     closed=True, filled=True, confidence=b.score))
    return fo.Polylines(polylines=lines)
