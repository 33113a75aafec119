"""Exact and near-duplicate search without comparing all pairs, and the rule that keeps every label.

The rule (:func:`deduplicate`): a duplicate is dropped only when its labels
add nothing to the image kept in its place (it has no labels, or the same
boxes: same classes, IoU >= ``curate.dedup.label_iou``). Near duplicates
with different labels (a fixed camera, objects moved) are all kept, and the
split keeps each such group together so no near copy of a training image is
evaluated on.

Near duplicates are images whose 64-bit perceptual hashes differ in at most
``t`` bits. :class:`HammingIndex` is a multi-index hash: the 64 bits are cut
into ``t + 1`` chunks, and two hashes within distance ``t`` agree exactly on
at least one chunk (pigeonhole), so a query only compares against the items
sharing a chunk value with it: about n log n work on real data instead of n².
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional, Sequence, Tuple


class HammingIndex:
    """Find stored 64-bit hashes within ``threshold`` bits of a query."""

    def __init__(self, threshold: int) -> None:
        if not 0 <= threshold < 64:
            raise ValueError(f"curate.dedup.hamming_threshold={threshold} must be within [0, 63]")
        self.threshold = threshold
        m = threshold + 1
        edges = [round(i * 64 / m) for i in range(m + 1)]
        self.chunks = [(a, b) for a, b in zip(edges, edges[1:]) if b > a]
        self.tables: List[Dict[int, List[int]]] = [defaultdict(list) for _ in self.chunks]
        self.hashes: List[int] = []
        self.keys: List[Hashable] = []

    def _parts(self, h: int) -> List[int]:
        return [(h >> a) & ((1 << (b - a)) - 1) for a, b in self.chunks]

    def add(self, h: int, key: Hashable) -> None:
        idx = len(self.hashes)
        self.hashes.append(h)
        self.keys.append(key)
        for table, part in zip(self.tables, self._parts(h)):
            table[part].append(idx)

    def query(self, h: int) -> List[Tuple[Hashable, int]]:
        """(key, distance) of every stored hash within the threshold."""
        seen = set()
        out = []
        for table, part in zip(self.tables, self._parts(h)):
            for idx in table.get(part, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                d = (self.hashes[idx] ^ h).bit_count()
                if d <= self.threshold:
                    out.append((self.keys[idx], d))
        return out


def near_duplicates(hashes: Sequence[int], order: Sequence[int], threshold: int) -> Dict[int, Tuple[int, int]]:
    """Greedy keep-one-per-cluster in ``order``.

    Returns ``{dropped: (kept, distance)}``: each dropped item points at the
    kept item it duplicates.
    """
    index = HammingIndex(threshold)
    dropped: Dict[int, Tuple[int, int]] = {}
    for i in order:
        hits = index.query(hashes[i])
        if hits:
            keep, d = min(hits, key=lambda kd: kd[1])
            dropped[i] = (int(keep), d)  # type: ignore[arg-type]
        else:
            index.add(hashes[i], i)
    return dropped


# ------------------------------------------------------------ label-aware
#: A sample's labels for deduplication: None (the source has no labels for it) or
#: (class, x0, y0, x1, y1) per box in coordinates relative to the image size.
Labels = Optional[Sequence[Tuple[str, float, float, float, float]]]


@dataclass
class Decision:
    """What deduplication decided.

    Attributes:
        dropped: ``{i: (k, distance, reason)}``: sample ``i`` is dropped as a
            duplicate of the kept sample ``k`` (its labels add nothing to ``k``'s).
        grouped: ``(i, k, distance)`` pairs of kept near duplicates whose labels
            differ: both stay, and they must share a split (no leak).
    """

    dropped: Dict[int, Tuple[int, int, str]] = field(default_factory=dict)
    grouped: List[Tuple[int, int, int]] = field(default_factory=list)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def equivalent(dup: Labels, kept: Labels, iou: float) -> bool:
    """Whether dropping ``dup`` in favour of ``kept`` loses no label.

    True when ``dup`` has no labels, or both have the same boxes: the same
    number per class, matched one to one (greedily, best IoU first) with IoU
    of at least ``iou``. An unlabelled ``kept`` never stands in for a labelled
    ``dup``.
    """
    if dup is None:
        return True
    if kept is None or len(dup) != len(kept):
        return False
    free = list(range(len(kept)))
    pairs = sorted(((_iou(a[1:], kept[j][1:]), i, j) for i, a in enumerate(dup) for j in free
                    if kept[j][0] == a[0]), reverse=True)
    used_a, used_b = set(), set()
    for v, i, j in pairs:
        if v >= iou and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return len(used_a) == len(dup)


def deduplicate(shas: Sequence[str], hashes: Sequence[int], labels: Sequence[Labels], order: Sequence[int],
                threshold: int, iou: float, drop_differing: bool = False) -> Decision:
    """Drop duplicates whose labels add nothing; group the others.

    Samples are visited labelled first, then in ``order`` (the policy's
    preference), so a cluster is represented by a labelled sample. Each
    sample is compared with the kept ones within ``threshold`` bits (same
    SHA-256: an exact duplicate): it is dropped in favour of the closest one
    whose labels are :func:`equivalent`; otherwise it is kept and grouped with
    every kept near duplicate (``drop_differing``: dropped anyway, the old
    keep-one-per-cluster rule, reported as such by the caller).
    """
    index = HammingIndex(threshold)
    decision = Decision()
    visit = sorted(order, key=lambda i: labels[i] is None)  # stable: labelled first, policy order within
    for i in visit:
        hits = sorted(index.query(hashes[i]), key=lambda kd: (kd[1], shas[kd[0]] != shas[i]))  # type: ignore
        match = next(((k, d) for k, d in hits if equivalent(labels[i], labels[k], iou)), None)  # type: ignore
        if match is None and drop_differing and hits:
            match = hits[0]
        if match is not None:
            k, d = match
            why = "exact duplicate" if shas[k] == shas[i] else "near duplicate"  # type: ignore[index]
            decision.dropped[i] = (int(k), d, why)  # type: ignore[arg-type]
            continue
        decision.grouped += [(i, int(k), d) for k, d in hits]  # type: ignore[arg-type]
        index.add(hashes[i], i)
    return decision
