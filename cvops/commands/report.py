"""``cvops report recipe=X [--print] [--outputs DIR]``: the newest run page (``report.html``) of the project.

Prints the page's path; opens it in a browser too where this machine has a display (``--print``: never).
The pages themselves are written by :mod:`cvops.report`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List

from cvops.commands._prologue import guarded, parse_args
from cvops.session import open_recipe


def main(argv: List[str]) -> int:
    """``cvops report``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops report", description="Show the newest run report of a recipe.")
    ap.add_argument("--print", dest="only_print", action="store_true", help="print the path, do not open it")
    ap.add_argument("--outputs", default="outputs", help="where run dirs are (hydra.run.dir's root)")
    args, overrides = parse_args(ap, argv)
    return guarded(lambda: _report(args, overrides))


def _report(args: argparse.Namespace, overrides: List[str]) -> int:
    from cvops.errors import ConfigError
    from cvops.report import NAME, latest
    from cvops.summary import command_args, program

    recipe = open_recipe(overrides, check_missing=False)
    project = str(recipe.cfg.project)
    page = latest(Path(args.outputs), project)
    if page is None:
        raise ConfigError(f"no {NAME} under {Path(args.outputs) / project}: run the recipe first "
                          f"({program()} {command_args(recipe.name, overrides)}), or point --outputs at the folder "
                          "its run dirs are in")
    print(page.resolve())
    if not args.only_print and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                or sys.platform == "darwin"):
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
    return 0
