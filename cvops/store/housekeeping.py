"""Store housekeeping: remove what no committed artifact refers to.

A build that dies leaves files without a manifest: a killed run, an export
whose gate failed, a stage whose code changed while it ran (``StaleCode``).
The next build of that fingerprint would wipe them, but a fingerprint that is
never built again keeps them forever; in an ``s3://`` store a killed build
leaves its uploads, its ``.pending`` files and its lease, and a build that lost
a concurrent commit leaves its copy. :func:`gc` lists all of that and, when
asked, removes it::

    cvops store gc recipe=X            # the listing and the bytes (nothing removed)
    cvops store gc recipe=X --apply    # removes exactly what the listing shows

It never removes a committed artifact (one with a manifest), nor the files a
manifest names, nor anything an artifact or a registry alias refers to (the
export an alias points at now or did, and the artifacts it came from), nor a
build in progress: a folder store's build lock is taken before anything is
removed, an ``s3://`` fingerprint whose lease is renewed is left whole, and
nothing written in the last ``grace_s`` seconds is touched (which also covers
a machine's clock a little off the bucket's).

An unfinished training kept to resume from (``train.resume=true``) is an
unfinished build like any other: once older than ``grace_s`` it is listed, so
read the dry run (or give a longer ``--grace-s``) before ``--apply``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, List, Set, Tuple

from cvops.store.base import FINGERPRINT, Garbage, Store, StoreError

log = logging.getLogger("cvops")

#: Nothing written more recently than this is garbage (seconds): a build in progress between two writes, a
#: clock a little off between a machine and the bucket.
GRACE_S = 3600.0


@dataclass
class GcReport:
    """What :func:`gc` found and, unless it was a dry run, removed."""

    store: str
    garbage: List[Garbage] = field(default_factory=list)
    applied: bool = False
    freed: int = 0  # bytes removed (0 on a dry run)
    kept: List[Tuple[str, str, str]] = field(default_factory=list)  # (stage, fingerprint, why) of unfinished kept

    @property
    def nbytes(self) -> int:
        """Bytes the garbage takes (what ``--apply`` frees)."""
        return sum(g.nbytes for g in self.garbage)

    def lines(self) -> List[str]:
        """The report for a person: one line per item, then the total."""
        head = "removed" if self.applied else "would remove (dry run: nothing removed; --apply removes it)"
        out = [f"store {self.store}: {head}"]
        for g in self.garbage:
            out.append(f"  {g.stage}/{g.fingerprint}  {_size(g.nbytes):>9}  {g.why}")
            out.append(f"      {g.where}")
        for stage, fp, why in self.kept:
            out.append(f"  kept {stage}/{fp}: {why}")
        total = _size(self.freed if self.applied else self.nbytes)
        out.append(f"{len(self.garbage)} item(s), {total} {'freed' if self.applied else 'to free'}"
                   if self.garbage else "nothing to remove")
        return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def referenced(store: Store, stages: Iterable[str]) -> Set[Tuple[str, str]]:
    """Every ``(stage, fingerprint)`` something still needs: the inputs each committed artifact of ``stages``
    names, and every export a registry alias of any project points at or pointed at (a rollback goes back to
    it) with the artifacts recorded beside it.

    Raises:
        StoreError: a committed manifest that cannot be read (named; nothing is removed while one is unreadable,
            since what it refers to is unknown).
    """
    from cvops.store.registry import Registry, projects

    out: Set[Tuple[str, str]] = set()
    for stage in stages:
        for fp in store.fingerprints(stage):
            manifest = store.manifest(stage, fp)  # type: ignore[attr-defined]
            for up, ufp in ((manifest or {}).get("inputs") or {}).items():
                if isinstance(up, str) and isinstance(ufp, str):
                    out.add((up, ufp))
    for project in projects(store):
        for ev in Registry(store, project).history():
            for fp in (ev.export, ev.previous):
                if isinstance(fp, str):
                    out.add(("export", fp))
            for up in ("train", "curate", "evaluate"):
                if isinstance(ev.info.get(up), str):
                    out.add((up, ev.info[up]))
    return out


def gc(store: Store, stages: Iterable[str], *, dry_run: bool = True, grace_s: float = GRACE_S) -> GcReport:
    """List (and with ``dry_run=False`` remove) what no committed artifact refers to.

    Args:
        store: The store (:func:`cvops.store.open_store`).
        stages: The stage folders to look in (a recipe's graph, plus ``reference``); other folders of the
            store (the registry, request logs, anything else kept there) are never looked at.
        dry_run: Only list (the default).
        grace_s: Leave anything written in the last ``grace_s`` seconds alone (default one hour).

    Returns:
        The report: each item with where it is, its bytes and why it is garbage; the bytes freed.

    Raises:
        StoreError: ``grace_s`` is negative, or a committed manifest cannot be read.
    """
    if grace_s < 0:
        raise StoreError(f"grace_s={grace_s}: give 0 or more seconds (what was written more recently is kept)")
    stages = list(dict.fromkeys(stages))
    bad = [s for s in stages if not s or "/" in s or s.startswith(".") or FINGERPRINT.fullmatch(s)]
    if bad:
        raise StoreError(f"stages {bad}: give stage folder names of the store (e.g. curate, train, reference)")
    needed = referenced(store, stages)
    report = GcReport(str(store))

    def keep(stage: str, fp: str) -> bool:
        if (stage, fp) in needed:
            report.kept.append((stage, fp, "unfinished, but a committed artifact or a registry alias refers to it"))
            return True
        return False

    report.garbage = store.garbage(stages, grace_s, keep)
    if dry_run:
        return report
    for item in report.garbage:
        freed = store.remove(item)
        if freed == 0 and item.nbytes > 0:  # a run took it (or committed it) since the listing
            report.kept.append((item.stage, item.fingerprint, "left alone: a run is building it now"))
            continue
        log.info("  gc: removed %s (%d bytes)", item.where, freed)
        report.freed += freed
    report.applied = True
    return report


__all__ = ["gc", "GcReport", "GRACE_S", "referenced"]
