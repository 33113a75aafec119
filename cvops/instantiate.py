"""The one way cvops builds objects from config: ``_target_`` + kwargs.

A recipe is data, not code. Every ``_target_`` (and ``_partial_`` target) in a
node must resolve inside :data:`ALLOWED_PREFIXES`; anything else, such as
``_target_: os.system``, is refused before Hydra imports it.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Module prefixes a ``_target_`` may point into.
ALLOWED_PREFIXES: Tuple[str, ...] = (
    "cvops.",
    "mmdet.",
    "mmengine.",
    "mmcv.",
    "torch.",
    "torchvision.",
    "onnxruntime.",
)


class TargetNotAllowed(ValueError):
    """A ``_target_`` outside the allow-list."""

    def __init__(self, key: str, target: str) -> None:
        self.key, self.target = key, target
        super().__init__(
            f"_target_ '{target}' at '{key}' is not allowed: targets must start with one of "
            f"{', '.join(ALLOWED_PREFIXES)} (a recipe is data, not code; wrap what you need "
            "in a cvops plug-in)"
        )


def _walk_targets(node: Any, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "_target_":
                yield key, str(v)
            else:
                yield from _walk_targets(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk_targets(v, f"{path}[{i}]")


def check_targets(node: Any, skip: Sequence[str] = ()) -> None:
    """Raise :class:`TargetNotAllowed` for the first disallowed ``_target_``.

    Args:
        node: a config node (DictConfig, ListConfig or plain containers).
        skip: top-level keys not to look into (``hydra``: Hydra's own node).
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict) and skip:
        node = {k: v for k, v in node.items() if k not in skip}
    for key, target in _walk_targets(node, ""):
        if not target.startswith(ALLOWED_PREFIXES):
            raise TargetNotAllowed(key, target)


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` behind the allow-list."""
    from hydra.utils import instantiate as hydra_instantiate

    if isinstance(node, dict):
        node = OmegaConf.create(node)
    check_targets(node)
    return hydra_instantiate(node, *args, **kwargs)
