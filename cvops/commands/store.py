"""``cvops store gc recipe=X [--apply] [--grace-s S]``: what no committed artifact refers to, listed or removed.

::

    cvops store gc recipe=bccd               # dry run: each item, where it is, its bytes and why
    cvops store gc recipe=bccd --apply       # removes exactly that
    cvops store gc recipe=bccd --grace-s 0   # also what was written in the last hour (no build may be running)

It looks in the folders of the recipe's stages and of the monitor's reference
profiles in the store ``paths.store`` names (a folder or ``s3://``); the work
is :func:`cvops.store.housekeeping.gc`.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops store``; returns the exit status."""
    from cvops.store.housekeeping import GRACE_S

    ap = argparse.ArgumentParser(prog="cvops store", description="Housekeeping of a recipe's artifact store.")
    ap.add_argument("action", choices=["gc"], help="gc: list (with --apply: remove) what no committed artifact "
                    "or registry alias refers to")
    ap.add_argument("--apply", action="store_true", help="remove what the listing shows (default: a dry run)")
    ap.add_argument("--grace-s", type=float, default=GRACE_S, metavar="S",
                    help=f"leave anything written in the last S seconds alone (default {GRACE_S:.0f})")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _gc(overrides, args.apply, args.grace_s))


def _gc(overrides: List[str], apply: bool, grace_s: float) -> int:
    from cvops.drift.profile import REFERENCE
    from cvops.stages import graph
    from cvops.store.housekeeping import gc

    recipe = open_recipe(overrides, check_missing=False)
    report = gc(recipe.store, [*graph(recipe.cfg), REFERENCE], dry_run=not apply, grace_s=grace_s)
    for line in report.lines():
        print(line)
    return 0
