"""The one way cvops builds objects from config: ``_target_`` + kwargs.

A recipe is data, not code: every ``_target_`` in the node must name an object
of the allow-list in :mod:`cvops.trust` (checked on the object the name
resolves to, before Hydra imports anything else).
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from cvops.trust import TARGETS, NotAllowed, check_targets

#: Kept for callers that catch the old name.
TargetNotAllowed = NotAllowed

__all__ = ["TARGETS", "NotAllowed", "TargetNotAllowed", "check_targets", "instantiate"]


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` behind the allow-list."""
    from hydra.utils import instantiate as hydra_instantiate

    if isinstance(node, dict):
        node = OmegaConf.create(node)
    check_targets(node)
    return hydra_instantiate(node, *args, **kwargs)
