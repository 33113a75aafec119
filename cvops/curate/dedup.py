"""Exact and near-duplicate search without comparing all pairs.

Near duplicates are images whose 64-bit perceptual hashes differ in at most
``t`` bits. :class:`HammingIndex` is a multi-index hash: the 64 bits are cut
into ``t + 1`` chunks, and two hashes within distance ``t`` agree exactly on
at least one chunk (pigeonhole), so a query only compares against the items
sharing a chunk value with it: about n log n work on real data instead of n².
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Hashable, List, Sequence, Tuple


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
