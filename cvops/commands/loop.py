"""``cvops loop recipe=X [--force]``: one tick of the automated loop (:mod:`cvops.loop.tick`).

::

    cvops loop recipe=quickstart            # triggers -> challenger -> champion vs challenger -> decision
    */5 * * * * cd /srv/cvops && .venv/bin/cvops loop recipe=quickstart >> loop.log 2>&1   # cron

Exit status 0 when the tick did its work or had nothing to do (another tick running, no trigger, the
same inputs decided before); 2 when it cannot start (no champion) or a step failed (the decision
says why; the alias is untouched).
"""

from __future__ import annotations

import argparse
from typing import List

from cvops.commands._prologue import guarded, parse_args


def main(argv: List[str]) -> int:
    """``cvops loop``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops loop", description="One tick of the automated loop.")
    ap.add_argument("--force", action="store_true", help="train and judge a challenger even without a trigger")
    args, overrides = parse_args(ap, argv)

    def work() -> int:
        from cvops.loop.tick import tick

        res = tick(overrides, force=args.force)
        return 2 if res.get("status") == "failed" else 0

    return guarded(work)
