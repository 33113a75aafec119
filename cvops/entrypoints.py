"""Installed packages' entry points in cvops' groups (``cvops.stages``, ``cvops.targets``), read once per process.

Every ``cvops`` command needs both groups. ``importlib.metadata`` costs 17 ms to import and about 8 ms per
``entry_points(group=...)`` call on a full environment; this module reads the ``entry_points.txt`` of each
installed distribution once, as ``importlib.metadata`` finds them (``*.dist-info`` / ``*.egg-info`` folders
on ``sys.path``, the first distribution of a name wins), and imports ``importlib.metadata`` only to load
an entry point. ``tests/test_plugin_stage.py`` checks it against ``importlib.metadata`` for every group.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # "module:attr" (extras, if any, stripped)
    group: str
    dist: Optional[str]  # the distribution's name as its metadata folder spells it

    def load(self) -> Any:
        import importlib.metadata

        return importlib.metadata.EntryPoint(self.name, self.value, self.group).load()


_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _parse(text: str, dist: str, prefix: str) -> List[EntryPoint]:
    out: List[EntryPoint] = []
    group = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        m = _SECTION.match(s)
        if m:
            group = m.group(1).strip()
            continue
        if group is None or not group.startswith(prefix) or "=" not in s:
            continue
        name, _, value = s.partition("=")
        out.append(EntryPoint(name.strip(), value.strip(), group, dist))
    return out


def scan(prefix: str = "") -> Dict[str, Tuple[EntryPoint, ...]]:
    """Every installed entry point whose group starts with ``prefix``, by group."""
    found: Dict[str, List[EntryPoint]] = {}
    seen = set()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            stem, dot, kind = n.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            raw = stem.rsplit("-", 1)[0] if kind == "dist-info" else stem.split("-", 1)[0]
            key = re.sub(r"[-_.]+", "-", raw).lower()
            if key in seen:
                continue
            seen.add(key)
            try:
                with open(os.path.join(entry or ".", n, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if prefix and f"[{prefix}" not in text:
                continue
            for ep in _parse(text, raw, prefix):
                found.setdefault(ep.group, []).append(ep)
    return {g: tuple(eps) for g, eps in found.items()}


@lru_cache(maxsize=1)
def _cvops_groups() -> Dict[str, Tuple[EntryPoint, ...]]:
    return scan("cvops.")


def entry_points(group: str) -> Tuple[EntryPoint, ...]:
    """The entry points of ``group`` (one of cvops' own groups ``cvops.*``)."""
    if not group.startswith("cvops."):
        raise ValueError(f"{group}: not a cvops entry-point group")
    return _cvops_groups().get(group, ())
