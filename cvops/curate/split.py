"""Seeded, stratified, grouped splits.

The unit of assignment is a group (all frames of one video, or whatever
``curate.split.group_by`` names); ungrouped images are their own group. Units
are stratified by their rarest class (empty units form their own stratum) and
shuffled with the seed; each stratum's units go, largest first, to the split
furthest below its target share of images, so ratios hold per stratum and no
group straddles two splits. When a stratum has only as many units left as it
has empty splits, those units go one to each empty split (two videos give a
train and a val split, not two train videos).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence


def assign(groups: Sequence[str], labels: Sequence[Sequence[str]], ratios: Dict[str, float], seed: int,
           stratify: bool = True, fixed: Optional[Sequence[Optional[str]]] = None) -> List[str]:
    """Split name for each item.

    Args:
        groups: group key per item (items sharing a key share a split).
        labels: class labels per item (for stratification).
        ratios: target share per split, e.g. ``{"train": .7, "val": .15, "test": .15}``.
        seed: the same inputs and seed give the same assignment.
        stratify: balance splits per stratum (rarest class of the unit).
        fixed: a split already given by the source per item (kept), or None.
    """
    total = sum(ratios.values())
    if total <= 0 or any(v < 0 for v in ratios.values()):
        raise ValueError(f"curate.split.ratios={ratios} must be non-negative and not all zero")
    target = {k: v / total for k, v in ratios.items()}
    fixed = fixed or [None] * len(groups)
    units: Dict[str, List[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        units[g].append(i)
    class_freq = Counter(c for ls in labels for c in set(ls))
    out: List[Optional[str]] = [None] * len(groups)
    counts: Dict[str, Counter] = defaultdict(Counter)  # stratum -> split -> images
    strata: Dict[str, List[str]] = defaultdict(list)
    for g, idx in units.items():
        given = {fixed[i] for i in idx if fixed[i] is not None}
        classes = {c for i in idx for c in labels[i]}
        stratum = min(classes, key=lambda c: (class_freq[c], c)) if (stratify and classes) else "" if stratify else "*"
        if given:  # the source's split wins (respect_source); a mixed group goes to its majority
            split = Counter(fixed[i] for i in idx if fixed[i] is not None).most_common(1)[0][0]
            for i in idx:
                out[i] = split
            counts[stratum][split] += len(idx)
        else:
            strata[stratum].append(g)
    rng = random.Random(seed)
    for stratum in sorted(strata):
        keys = sorted(strata[stratum])
        rng.shuffle(keys)
        keys.sort(key=lambda g: -len(units[g]))  # big groups first, ties in shuffled order
        c = counts[stratum]
        for k, g in enumerate(keys):
            n = sum(c.values()) + len(units[g])
            empty = [s for s in target if target[s] > 0 and c[s] == 0]
            if empty and len(keys) - k <= len(empty):  # few units left: give every split one
                split = max(empty, key=lambda s: target[s])
            else:
                split = max(target, key=lambda s: (target[s] * n - c[s], target[s]))
            for i in units[g]:
                out[i] = split
            c[split] += len(units[g])
    return [s for s in out]  # type: ignore[misc]
