"""The command-line half of every ``cvops <verb>``'s prologue: parse the flags, report a user's error.

::

    from cvops.session import open_recipe

    def main(argv):
        args, overrides = parse_args(parser, argv)
        return guarded(lambda: _work(args, open_recipe(overrides)))

The other half, shared with the Python API (:mod:`cvops.api`), is
:func:`cvops.session.open_recipe`: it validates the command line exactly as
``cvops recipe=X`` does, composes it once, opens the store and finds the
artifacts (a missing one is an error naming the ``stages=[...]`` to run).
:func:`guarded` turns every :class:`cvops.errors.UserError` (and ``OSError``)
into one ``cvops: error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Sequence, Tuple

from cvops.errors import EXIT_STATUS, UserError, one_line

#: What a command reports as one line with exit status 2 instead of a traceback: the user's to fix.
USER_ERRORS = (UserError, OSError)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """The command's own flags, and the rest as Hydra overrides (``recipe=X key=value``).

    An unknown ``--flag`` is refused with the usage (exit status 2) rather than read as an override.
    """
    args, rest = parser.parse_known_args(list(argv))
    flags = [a for a in rest if a.startswith("-")]  # no Hydra override starts with '-'
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)} (a config value is key=value, e.g. recipe=quickstart)")
    return args, rest


def guarded(work: Callable[[], int]) -> int:
    """``work()``, with a user's error as one ``cvops: error:`` line on stderr and exit status 2."""
    try:
        return work()
    except USER_ERRORS as e:
        print(one_line(e), file=sys.stderr)
        return EXIT_STATUS
