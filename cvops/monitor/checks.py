"""The monitor stage's own check of its config: every value its types cannot refuse, before any work.

Light to import (no numpy, no FiftyOne): the preflight runs it for every recipe, so that a typo in
``monitor.on_drift`` is refused before curate, train and export have run, not after.
"""

from __future__ import annotations

import math
from typing import Any

from cvops.errors import ConfigError


def check(mon: Any) -> None:
    """Refuse ``monitor`` values no monitor can run with, naming the key, the value and the fix.

    Args:
        mon: the ``monitor`` config (:class:`cvops.schema.MonitorConfig`).

    Raises:
        ConfigError: the first bad value.
    """
    def need(ok: bool, key: str, want: str) -> None:
        if not ok:
            raise ConfigError(f"monitor.{key}={getattr(mon, key)!r}: {want}")

    def fraction(key: str, low_open: bool = False) -> None:
        v = float(getattr(mon, key))
        need(math.isfinite(v) and (0.0 < v if low_open else 0.0 <= v) and v <= 1.0, key,
             f"a number in {'(' if low_open else '['}0, 1]")

    for key in ("window", "drift_window", "drift_every", "max_edge_cases", "mmd_permutations"):
        need(int(getattr(mon, key)) >= 1, key, "1 or more")
    need(math.isfinite(mon.fps) and mon.fps > 0, "fps", "frames per second, more than 0")
    fraction("p_value", low_open=True)
    for key in ("low_confidence", "near_threshold", "overlap_iou", "embedding_quantile", "edge_rate"):
        fraction(key)
    need(math.isfinite(mon.psi_threshold) and mon.psi_threshold >= 0, "psi_threshold", "0 or more")
    alerts = getattr(mon, "alerts", None)
    if alerts is not None:
        from cvops.monitor.alerts import problems

        bad = problems(alerts)
        if bad:
            raise ConfigError(bad[0])
    if mon.on_drift and mon.on_drift != "loop":  # loop: a tick of this recipe's loop (cvops loop)
        from cvops.recipes import available_recipes

        names = available_recipes()
        need(mon.on_drift in names, "on_drift", f"no such recipe; choose loop or one of {', '.join(names)} "
                                                  "(recipe folders: CVOPS_RECIPE_PATH)")


def check_stage(config: Any) -> None:
    """:func:`check` of a stage's typed view (``Stage.check``)."""
    check(config.monitor)
