"""``cvops recipes``: the recipes cvops can see, and where each one is."""

from __future__ import annotations

import argparse
from typing import List


def main(argv: List[str]) -> int:
    """``cvops recipes``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops recipes", description="The recipes cvops can see.")
    ap.parse_args(argv)
    from cvops.recipes import available_recipes, find_recipe, recipe_dirs

    for name in available_recipes():
        print(f"{name:20s} {find_recipe(name)}")
    print(f"(searched {', '.join(str(d) for d in recipe_dirs())}; add directories with CVOPS_RECIPE_PATH)")
    return 0
