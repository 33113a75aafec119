"""``cvops rollback recipe=X --alias A [-m msg]``: point a registry alias back at its previous export.

The registry itself (the history as a stack per alias) is :mod:`cvops.store.registry`.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops rollback``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops rollback", description="Point a registry alias back at its previous export.")
    ap.add_argument("--alias", required=True, help="e.g. production, staging")
    ap.add_argument("-m", "--message", default="", help="why (kept in the history)")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _rollback(args, overrides))


def _rollback(args: argparse.Namespace, overrides: List[str]) -> int:
    from cvops.commands._registry import metrics_text, report_damage
    from cvops.store.registry import Registry

    recipe = open_recipe(overrides, check_missing=False)
    reg = Registry(recipe.store, str(recipe.cfg.project))
    try:
        ev = reg.rollback(args.alias, args.message)
    finally:
        report_damage(reg)
    print(f"{reg.project}: {ev.alias} -> export {ev.export} (rolled back from {ev.previous}); "
          f"{metrics_text(ev.info)}")
    return 0
