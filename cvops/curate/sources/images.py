"""Unlabelled images: every image file under a folder (or one file)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from cvops.curate.sources.items import Item
from cvops.curate.sources.ledger import Ledger
from cvops.curate.sources.paths import Scope, image_files, is_dir, split_of


def read_images(root: Path, source: str, ledger: Optional[Ledger] = None,
                scope: Optional[Scope] = None) -> List[Item]:
    """Every image file under ``root`` (or ``root`` itself, a file), unlabelled."""
    ledger = ledger if ledger is not None else Ledger()
    folder = is_dir(root)
    scope = (scope or Scope()).plus(root if folder else root.parent)
    files = image_files(root, scope, ledger) if folder else [root]
    if folder:
        ledger.cover(root, root, scope)
    items = []
    for p in files:
        ledger.use(p)
        refused = scope.refusal(p)
        if refused:
            ledger.add("image", str(p), *refused)
            continue
        items.append(Item(p, str(p), source, None, split=split_of(p.relative_to(root)) if folder else None))
    return items
