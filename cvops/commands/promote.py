"""``cvops promote recipe=X --alias A [--export FP] [-m msg] [--force]``: point a registry alias at an export.

Without ``--export``, the export artifact of the recipe as configured now (if it is not built, the error
says which stages to run). The registry itself is :mod:`cvops.store.registry`.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops promote``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops promote", description="Point a registry alias at an export.")
    ap.add_argument("--alias", required=True, help="e.g. production, staging")
    ap.add_argument("-m", "--message", default="", help="why (kept in the history)")
    ap.add_argument("--export", default=None, help="an export fingerprint (prefix); default: the recipe's")
    ap.add_argument("--force", action="store_true", help="promote an export whose gate did not pass")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _promote(args, overrides))


def _promote(args: argparse.Namespace, overrides: List[str]) -> int:
    from cvops.commands._registry import metrics_text, report_damage
    from cvops.store.registry import Registry, find_export

    recipe = open_recipe(overrides, check_missing=False)
    reg = Registry(recipe.store, str(recipe.cfg.project))
    export = (find_export(reg.store, args.export, reg.project) if args.export
              else recipe.require("export", alternative="or name one with --export"))
    try:
        ev = reg.promote(args.alias, export, args.message, force=args.force)
    finally:
        report_damage(reg)
    was = f" (was {ev.previous})" if ev.previous else ""
    print(f"{reg.project}: {ev.alias} -> export {ev.export}{was}; {metrics_text(ev.info)}")
    return 0
