"""Recipe discovery: ``recipe=<name>`` selects ``<dir>/<name>.yaml``.

Recipes live in plain directories, not inside ``conf/``: the bundled
``recipes/`` (shipped inside the package as ``cvops/_recipes``) plus any directories listed in the ``CVOPS_RECIPE_PATH``
environment variable (``os.pathsep``-separated, searched first, so a user's
``quickstart.yaml`` shadows the bundled one).

Hydra sees them as the config group ``recipe`` through a small config source
(scheme ``recipes://``) whose path is that list of directories; the primary
config puts it on Hydra's search path with the ``cvops_recipe_path`` resolver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from hydra._internal.sources_registry import SourcesRegistry
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

PKG = Path(__file__).resolve().parent
#: The checkout (for ``git_sha`` in run.json); an installed package has none.
ROOT = PKG.parent
#: The config groups and bundled recipes, inside the package (``cvops/_conf`` and ``cvops/_recipes`` link
#: to the checkout's ``conf/`` and ``recipes/``; a built wheel holds copies), so an installed cvops works
#: from any directory.
CONF_DIR = (PKG / "_conf").resolve()
RECIPES_DIR = (PKG / "_recipes").resolve()
GROUP = "recipe"


def recipe_dirs() -> List[Path]:
    """Directories searched for recipes, in priority order."""
    extra = [Path(p).expanduser() for p in os.environ.get("CVOPS_RECIPE_PATH", "").split(os.pathsep) if p]
    return [*extra, RECIPES_DIR]


def available_recipes() -> List[str]:
    names = set()
    for d in recipe_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_recipe(name: str) -> Optional[Path]:
    for d in recipe_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


class RecipeConfigSource(ConfigSource):
    """Exposes recipe directories as the Hydra config group ``recipe``."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.dirs = [Path(p) for p in self.path.split(os.pathsep) if p]

    @staticmethod
    def scheme() -> str:
        return "recipes"

    @staticmethod
    def _inner(config_path: str) -> Optional[str]:
        if config_path == GROUP:
            return ""
        if config_path.startswith(GROUP + "/"):
            return config_path[len(GROUP) + 1 :]
        return None

    def _file(self, config_path: str) -> Optional[Path]:
        inner = self._inner(config_path)
        if not inner:
            return None
        name = self._normalize_file_name(inner)
        for d in self.dirs:
            p = d / name
            if p.is_file():
                return p
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        path = self._file(config_path)
        if path is None:
            raise ConfigLoadError(f"Recipe not found: {config_path}")
        with open(path, encoding="utf-8") as f:
            header = ConfigSource._get_header_dict(f.read(512))
            f.seek(0)
            cfg = OmegaConf.load(f)
        return ConfigResult(config=cfg, path=f"file://{path.parent}", provider=self.provider, header=header)

    def available(self) -> bool:
        return any(d.is_dir() for d in self.dirs)

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        return self._file(config_path) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if config_path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return available_recipes()


def _recipe_path() -> str:
    return os.pathsep.join(str(d) for d in recipe_dirs())


SourcesRegistry.instance().register(RecipeConfigSource)
if not OmegaConf.has_resolver("cvops_recipe_path"):
    OmegaConf.register_new_resolver("cvops_recipe_path", _recipe_path)
