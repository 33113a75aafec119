"""Defaults live in one place: the schema (cvops/schema.py).

A group option (``conf/<group>/<option>.yaml``) sets only what makes that
option different; a value equal to the schema default is a second copy that
would silently stay behind when the default changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import yaml
from omegaconf import OmegaConf

from cvops import schema
from cvops.recipes import CONF_DIR

GROUPS = {"data": schema.DataConfig, "curate": schema.CurateConfig, "model": schema.ModelConfig,
          "train": schema.TrainConfig, "evaluate": schema.EvaluateConfig, "export": schema.ExportConfig,
          "serve": schema.ServeConfig, "monitor": schema.MonitorConfig, "tracker": schema.TrackerConfig}


def restated(values: Dict[str, Any], defaults: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key = value`` for every leaf of ``values`` equal to its default (``defaults`` lists excluded)."""
    out = []
    for key, v in (values or {}).items():
        if not prefix and key == "defaults" or key not in defaults:
            continue
        d = defaults[key]
        if isinstance(v, dict) and isinstance(d, dict) and d:
            out += restated(v, d, f"{prefix}{key}.")
        elif v == d and d != "???":
            out.append(f"{prefix}{key} = {v!r}")
    return out


def schema_defaults(cls: type) -> Dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cls), enum_to_str=True)


def test_no_group_option_restates_a_schema_default():
    found = []
    for group, cls in GROUPS.items():
        defaults = schema_defaults(cls)
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            found += [f"{f.relative_to(CONF_DIR)}: {r} (the schema default)"
                      for r in restated(yaml.safe_load(f.read_text()), defaults)]
    assert not found, "defaults written twice; delete them from conf/ (cvops/schema.py holds them):\n" + \
        "\n".join(found)


def test_every_group_option_points_to_its_schema_dataclass():
    """A reader of a short option file learns where the rest of the values are."""
    missing = [str(f.relative_to(CONF_DIR)) for group, cls in GROUPS.items()
               for f in sorted((CONF_DIR / group).glob("*.yaml"))
               if f"cvops/schema.py ({cls.__name__})" not in f.read_text()]
    assert not missing, f"no '# ... cvops/schema.py (<dataclass>) ...' comment in {missing}"


def test_primary_config_restates_no_root_default():
    primary = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    root = {k: v for k, v in schema_defaults(schema.CvopsConfig).items() if not isinstance(v, dict) or k in
            ("leaderboard", "paths")}
    assert restated(primary, root) == []


def test_the_check_finds_a_planted_copy(tmp_path: Path):
    planted = {"defaults": ["onnx"], "int8": True, "opset": 18, "gate": {"max_map_drop": 0.5, "int8_max_map_drop": 3.0}}
    assert restated(planted, schema_defaults(schema.ExportConfig)) == ["opset = 18", "gate.max_map_drop = 0.5"]
