"""``cvops store gc|new-id recipe=X``: housekeeping of a recipe's artifact store.

::

    cvops store gc recipe=bccd               # dry run: each item, where it is, its bytes and why
    cvops store gc recipe=bccd --apply       # removes exactly that
    cvops store gc recipe=bccd --grace-s 0   # also what was written in the last hour (no build may be running)
    cvops store new-id paths.store=/data/store-copy   # a copied store (cp -a) gets its own identity

``new-id`` gives a folder store a new id and removes the copy's curate artifacts whose FiftyOne datasets
belong to the original store (the next run curates the same data again, into datasets of its own; the
artifacts after curate keep their fingerprints and are reused).

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
    ap.add_argument("action", choices=["gc", "new-id"], help="gc: list (with --apply: remove) what no committed "
                    "artifact or registry alias refers to; new-id: a copied store's own identity")
    ap.add_argument("--apply", action="store_true", help="remove what the listing shows (default: a dry run)")
    ap.add_argument("--grace-s", type=float, default=GRACE_S, metavar="S",
                    help=f"leave anything written in the last S seconds alone (default {GRACE_S:.0f})")
    args, overrides = parse_args(ap, argv)
    if args.action == "new-id":
        return guarded(lambda: _new_id(overrides))
    return guarded(lambda: _gc(overrides, args.apply, args.grace_s))


def _new_id(overrides: List[str]) -> int:
    import shutil

    from cvops.errors import StoreError
    from cvops.fo import connect
    from cvops.store import FolderStore

    from cvops.remote import is_url
    from cvops.session import compose_job

    where = str(compose_job(overrides, check_missing=False).paths.store)  # not opened: a copy refuses to open
    if is_url(where):
        raise StoreError(f"cvops store new-id works on a folder store; {where} is a bucket: copy a bucket's store "
                         "without its store-id object instead")
    store = FolderStore(where)
    try:
        old = (store.root / "store-id").read_text(encoding="utf-8").strip()
    except OSError:
        old = ""
    new = store.new_id()
    print(f"store {store.root}: new id {new} (was {old or 'none'})")
    if not old:
        return 0
    fo = connect()
    for art in list(store.artifacts("curate")):
        name = art.metrics.get("dataset_name")
        if not name or not fo.dataset_exists(name):
            continue
        owner = (fo.load_dataset(name).info or {}).get("cvops_build", {}).get("store_id")
        if owner == old:  # the original's dataset: curate again into this store's own
            shutil.rmtree(store.dir("curate", art.fingerprint), ignore_errors=True)
            print(f"  removed curate {art.fingerprint}: its FiftyOne dataset {name} belongs to the original store "
                  "(the next run curates the same data again into this store's own dataset)")
    return 0


def _gc(overrides: List[str], apply: bool, grace_s: float) -> int:
    from cvops.drift.profile import REFERENCE
    from cvops.stages import graph
    from cvops.store.housekeeping import gc

    recipe = open_recipe(overrides, check_missing=False)
    report = gc(recipe.store, [*graph(recipe.cfg), REFERENCE], dry_run=not apply, grace_s=grace_s)
    for line in report.lines():
        print(line)
    return 0
