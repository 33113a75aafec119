"""``cvops models recipe=X``: each registry alias of the project and what it points at, then the history.

The registry itself is :mod:`cvops.store.registry`.
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops models``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops models", description="A project's registry aliases and their history.")
    _, overrides = parse_args(ap, argv)
    return guarded(lambda: _models(overrides))


def _models(overrides: List[str]) -> int:
    from cvops.commands._registry import report_damage, table
    from cvops.store.registry import Registry

    recipe = open_recipe(overrides, check_missing=False)
    reg = Registry(recipe.store, str(recipe.cfg.project))
    for line in table(reg.project, reg.aliases(), reg.history()):
        print(line)
    report_damage(reg)
    return 0
