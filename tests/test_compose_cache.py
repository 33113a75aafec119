"""The compose cache (cvops.composecache) serves a composition only when nothing it read has changed.

Each test changes one input of Hydra's composition (a recipe byte with the same size and time stamp, a config
folder a recipe adds to the search path, the environment, the working directory, the code) and checks that
the next composition sees the change. A planted or damaged entry never runs code and never replaces a
composition.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, List

import pytest
from omegaconf import OmegaConf

import cvops
from cvops import composecache, config

RECIPE = """# @package _global_
project: mine
train:
  lr: {lr}
hydra:
  job:
    env_copy: [WANDB_TEST_COPIED]
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A recipe folder (recipe ``mine``), a config folder it adds to the search path, a private cache."""
    recipes, extra = tmp_path / "recipes", tmp_path / "extra"
    (extra / "train").mkdir(parents=True)
    recipes.mkdir()
    (recipes / "mine.yaml").write_text(RECIPE.format(lr=0.011))
    (extra / "train" / "custom.yaml").write_text("max_epochs: 71\n")
    monkeypatch.setenv("CVOPS_RECIPE_PATH", str(recipes))
    monkeypatch.setenv("CVOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_TEST_COPIED", "one")
    monkeypatch.delenv("CVOPS_COMPOSE_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    # as if this process had started a while after the files were written (files that changed just before
    # or after the start are not cached: test_a_file_changed_as_the_process_started_is_not_cached)
    monkeypatch.setattr(cvops, "STARTED_NS", time.time_ns() + 2 * composecache.SETTLE_NS)
    # the key covers the modules this process has imported: import what a composition imports first, as
    # the cvops command has when it looks the key up
    config.compose_config(["recipe=mine"], hydra_node=True, cache=True)
    shutil.rmtree(composecache.cache_dir(), ignore_errors=True)
    return tmp_path


class Counter:
    """Counts Hydra compositions (cache misses) made through cvops.config."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = config.compose

        def compose(*a, **k):
            self.n += 1
            return real(*a, **k)

        monkeypatch.setattr(config, "compose", compose)


#: the command line of most tests: a recipe from CVOPS_RECIPE_PATH
LINE: List[str] = ["recipe=mine"]


def extra_line(root: Path) -> List[str]:
    """A recipe, and a config group option from a folder the command line adds to Hydra's search path."""
    return ["recipe=mine", "train=custom", f"hydra.searchpath=[recipes://{root / 'recipes'},file://{root / 'extra'}]"]


def cached(line: List[str] = LINE):
    return config.compose_config(line, hydra_node=True, cache=True)


def fresh(line: List[str] = LINE):
    return config.compose_config(line, hydra_node=True)


def same(a, b) -> bool:
    return OmegaConf.to_yaml(a) == OmegaConf.to_yaml(b)


def rewrite_keeping_size_and_time(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    st = path.stat()
    path.write_text(path.read_text().replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_hit_is_the_composition_itself(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = Counter(monkeypatch)
    line = extra_line(setup)
    first = cached(line)
    assert count.n == 1 and len(list(composecache.cache_dir().glob("*.pkl"))) == 1
    hit = cached(line)
    assert count.n == 1, "the second composition of an unchanged command line came from the cache"
    assert same(hit, first) and same(hit, fresh(line))
    for key in ("train", "model", "export", "hydra"):  # typed like Hydra's own composition
        assert OmegaConf.get_type(hit, key) is OmegaConf.get_type(first, key)
    assert OmegaConf.is_struct(hit) and hit.train.lr == 0.011 and hit.train.max_epochs == 71
    hit.train.lr = 0.5  # each hit is a fresh object: a caller's change does not reach the next one
    assert cached(line).train.lr == 0.011
    without = config.compose_config(line, cache=True)
    assert "hydra" not in without and same(without, config.compose_config(line))


Change = Callable[[Path, pytest.MonkeyPatch], None]


def _recipe_byte(root: Path, mp: pytest.MonkeyPatch) -> None:
    rewrite_keeping_size_and_time(root / "recipes" / "mine.yaml", "lr: 0.011", "lr: 0.012")


def _searchpath_file(root: Path, mp: pytest.MonkeyPatch) -> None:
    rewrite_keeping_size_and_time(root / "extra" / "train" / "custom.yaml", "71", "72")


def _recipe_path(root: Path, mp: pytest.MonkeyPatch) -> None:
    other = root / "other"
    other.mkdir()
    (other / "mine.yaml").write_text(RECIPE.format(lr=0.013))
    mp.setenv("CVOPS_RECIPE_PATH", f"{other}{os.pathsep}{root / 'recipes'}")


def _copied_env(root: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setenv("WANDB_TEST_COPIED", "two")


def _cwd(root: Path, mp: pytest.MonkeyPatch) -> None:
    (root / "elsewhere").mkdir()
    mp.chdir(root / "elsewhere")


def _code(root: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(composecache, "code_digest", lambda: "another version of the code")


@pytest.mark.parametrize("change", [_recipe_byte, _searchpath_file, _recipe_path, _copied_env, _cwd, _code],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_input_of_the_composition_is_in_the_key(setup: Path, monkeypatch: pytest.MonkeyPatch,
                                                      change: Change) -> None:
    line = extra_line(setup) if change is _searchpath_file else LINE
    before = cached(line)
    change(setup, monkeypatch)
    count = Counter(monkeypatch)
    after = cached(line)
    assert count.n == 1, "the change was not seen: the old composition was served"
    assert same(after, fresh(line))
    assert change is _code or not same(after, before)  # (the stand-in for edited code changes no value)


def test_the_code_digest_reads_contents_not_time_stamps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cvops and every hydra_plugins folder are hashed by content; a stage plug-in, once loaded, by its files'
    change times (a same-size edit that keeps the mtime still moves the ctime)."""
    plugin = tmp_path / "site" / "hydra_plugins" / "acme_launcher"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("NAME = 'a'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    base = composecache.code_digest()
    rewrite_keeping_size_and_time(plugin / "__init__.py", "'a'", "'b'")
    assert composecache.code_digest() != base, "a Hydra plug-in's code (it may register configs) is in the key"

    stage = tmp_path / "site" / "acme_stage"
    stage.mkdir()
    (stage / "__init__.py").write_text("X = 1\n")
    from cvops import entrypoints

    ep = entrypoints.EntryPoint("acme", "acme_stage:STAGE", "cvops.stages", "acme")
    monkeypatch.setattr(entrypoints, "entry_points", lambda group: (ep,) if group == "cvops.stages" else ())
    import importlib

    monkeypatch.setitem(sys.modules, "acme_stage", importlib.import_module("acme_stage"))  # as plugins() loads it
    with_stage = composecache.code_digest()
    rewrite_keeping_size_and_time(stage / "__init__.py", "X = 1", "X = 2")
    assert composecache.code_digest() != with_stage, "a stage plug-in's package (its schema) is in the key"


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _entry(setup: Path) -> Path:
    cached()
    (entry,) = composecache.cache_dir().glob("*.pkl")
    return entry


def test_a_planted_entry_runs_no_code_and_is_not_served(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(setup)
    head = entry.read_bytes().split(b"\n", 2)  # magic line, metadata line (valid key and digests), payload
    marker = setup / "pwned"
    for payload in (pickle.dumps(_Boom(marker)), pickle.dumps(subprocess.Popen), pickle.dumps({"a": 1}),
                    pickle.dumps(config.ConfigError("x")),
                    b"ccvops.__main__\nmain\n.",  # importing it would run the command again
                    b"ccvops.runner\nRunner\n."):  # a class, but not a config node
        entry.write_bytes(head[0] + b"\n" + head[1] + b"\n" + payload)
        count = Counter(monkeypatch)
        cfg = cached()
        assert count.n == 1 and same(cfg, fresh()) and not marker.exists()


def test_an_entry_naming_a_package_source_imports_nothing(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sources an entry lists are read before its payload: naming a package there must not import it."""
    site = setup / "site" / "cc_side_effect"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text(f"open({str(setup / 'imported')!r}, 'w').close()\n")
    (site / "conf").mkdir()
    (site / "conf" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(setup / "site"))
    entry = _entry(setup)
    magic, head, payload = entry.read_bytes().split(b"\n", 2)
    meta = json.loads(head)
    meta["sources"].append({"schema": "pkg", "path": "cc_side_effect.conf", "provider": "planted"})
    entry.write_bytes(magic + b"\n" + json.dumps(meta).encode() + b"\n" + payload)
    count = Counter(monkeypatch)
    cached()
    assert count.n == 1 and not (setup / "imported").exists()


def test_a_damaged_or_shared_entry_is_a_miss(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entry(setup)
    good = entry.read_bytes()
    for damaged in (good[: len(good) // 2], b"", b"junk", good.replace(b'"format": 1', b'"format": 9')):
        entry.write_bytes(damaged)
        count = Counter(monkeypatch)
        cfg = cached()
        assert count.n == 1 and same(cfg, fresh())
    count = Counter(monkeypatch)
    cached()
    assert count.n == 0, "the miss wrote a good entry again"
    if hasattr(os, "getuid"):
        entry.chmod(0o666)  # another user could have written it
        count = Counter(monkeypatch)
        cached()
        assert count.n == 1


def test_the_cache_can_be_turned_off(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVOPS_COMPOSE_CACHE", "0")
    count = Counter(monkeypatch)
    cached()
    cached()
    assert count.n == 2 and not composecache.cache_dir().exists()


def test_the_command_sees_an_edit_that_keeps_size_and_time(setup: Path) -> None:
    """The real ``cvops`` process: ``--cfg job`` twice (the second from the cache), then an edited recipe."""
    env = {**os.environ}
    cmd = [sys.executable, "-m", "cvops", *extra_line(setup), "--cfg", "job"]

    def lr() -> str:
        out = subprocess.run(cmd, env=env, cwd=setup, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return OmegaConf.create(out.stdout).train.lr

    time.sleep(composecache.SETTLE_NS / 1e9 + 0.2)  # the files settle before the process starts
    assert lr() == 0.011
    (entry,) = composecache.cache_dir().glob("*.pkl")
    inode = entry.stat().st_ino
    assert lr() == 0.011
    assert [p.stat().st_ino for p in composecache.cache_dir().glob("*.pkl")] == [inode], "the second run was a hit"
    _recipe_byte(setup, pytest.MonkeyPatch())
    assert lr() == 0.012


def test_a_file_changed_as_the_process_started_is_not_cached(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra may read a file before an edit and the digest after it: such a composition is not stored."""
    monkeypatch.setattr(cvops, "STARTED_NS", time.time_ns())  # the recipe was written just now
    count = Counter(monkeypatch)
    cached()
    cached()
    assert count.n == 2 and not list(composecache.cache_dir().glob("*.pkl"))


def test_names_that_may_lie_outside_their_source_are_not_cached(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = setup / "outside"
    outside.mkdir()
    (outside / "b.yaml").write_text(RECIPE.format(lr=0.031))
    for line in (["recipe=../outside/b"], [f"recipe={outside / 'b.yaml'}"]):
        count = Counter(monkeypatch)
        assert cached(line).train.lr == 0.031
        rewrite_keeping_size_and_time(outside / "b.yaml", "0.031", "0.032")
        assert cached(line).train.lr == 0.032 and count.n == 2
        rewrite_keeping_size_and_time(outside / "b.yaml", "0.032", "0.031")
    assert not list(composecache.cache_dir().glob("*.pkl"))


def test_hidden_folders_of_a_source_are_hashed(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in (".drafts", "__pycache__"):
        (setup / "recipes" / folder).mkdir()
        (setup / "recipes" / folder / "x.yaml").write_text(RECIPE.format(lr=0.041))
        line = [f"recipe={folder}/x"]
        assert cached(line).train.lr == 0.041
        rewrite_keeping_size_and_time(setup / "recipes" / folder / "x.yaml", "0.041", "0.042")
        assert cached(line).train.lr == 0.042


def test_a_package_source_inside_a_zip_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("zpkg/__init__.py", "")
        z.writestr("zpkg/conf/__init__.py", "")
        z.writestr("zpkg/conf/train/zz.yaml", "max_epochs: 31\n")
    monkeypatch.syspath_prepend(str(tmp_path / "z.zip"))
    import importlib

    monkeypatch.setitem(sys.modules, "zpkg", importlib.import_module("zpkg"))  # as Hydra's pkg:// source has
    with pytest.raises(composecache._Uncacheable, match="not a folder"):
        composecache.sources_digest([{"schema": "pkg", "path": "zpkg.conf", "provider": "test"}])


def test_the_least_recently_used_entries_go_first(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(composecache, "MAX_ENTRIES", 3)
    folder = composecache.cache_dir()
    folder.mkdir(parents=True, mode=0o700)
    future = time.time() + 10 * 365 * 86400  # restored from a backup, or a skewed clock
    for i in range(3):
        (folder / f"old{i}.pkl").write_bytes(b"x")
        os.utime(folder / f"old{i}.pkl", (future, future))
    cached()
    kept = sorted(p.name for p in folder.glob("*.pkl"))
    assert len(kept) == 3 and any(not n.startswith("old") for n in kept), kept


def test_a_source_swapped_while_hydra_reads_it_is_not_stored(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An atomic deploy re-points a link between Hydra's read and the digest: nothing is stored."""
    for name, lr in (("A", 0.051), ("B", 0.052)):
        (setup / name).mkdir()
        (setup / name / "mine.yaml").write_text(RECIPE.format(lr=lr))
    (setup / "current").symlink_to(setup / "A")
    monkeypatch.setenv("CVOPS_RECIPE_PATH", str(setup / "current"))
    real = config.compose

    def compose_then_swap(*a, **k):
        out = real(*a, **k)  # Hydra has read A
        (setup / "next").symlink_to(setup / "B")
        os.replace(setup / "next", setup / "current")
        return out

    monkeypatch.setattr(config, "compose", compose_then_swap)
    assert cached().train.lr == 0.051
    assert not list(composecache.cache_dir().glob("*.pkl")), "A's composition was stored under B's digest"
    monkeypatch.setattr(config, "compose", real)
    assert cached().train.lr == 0.052 and same(cached(), fresh())


def test_a_module_a_plugin_imports_is_in_the_key(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module loaded in this process (a plug-in's helper that sets a default or a preset) is keyed by its file."""
    (setup / "site").mkdir()
    (setup / "site" / "helperlib_cc.py").write_text("DEFAULT = 3\n")
    monkeypatch.syspath_prepend(str(setup / "site"))
    import helperlib_cc  # noqa: F401

    monkeypatch.setitem(sys.modules, "helperlib_cc", sys.modules["helperlib_cc"])
    cached()
    count = Counter(monkeypatch)
    cached()
    assert count.n == 0
    rewrite_keeping_size_and_time(setup / "site" / "helperlib_cc.py", "= 3", "= 8")
    cached()
    assert count.n == 1


def test_what_may_compose_differently_each_time_is_not_stored(setup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"train": "default"}
    OmegaConf.register_new_resolver("cc_test_pick", lambda: state["train"], replace=True)
    (setup / "recipes" / "picked.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /train: ${cc_test_pick:}\nproject: picked\n")
    line = ["recipe=picked"]
    assert cached(line).train.max_epochs == fresh(line).train.max_epochs
    state["train"] = "cpu_smoke"
    assert same(cached(line), fresh(line)), "a resolver in a defaults list is evaluated while composing"
    cached(["recipe=mine", "data.classes=shuffle([a,b,c,d,e,f])"])
    assert not list(composecache.cache_dir().glob("*.pkl"))


def test_an_empty_folder_in_a_source_is_part_of_the_digest(setup: Path) -> None:
    line = [*extra_line(setup), "project=foo"]
    assert cached(line).project == "foo"
    (setup / "extra" / "project").mkdir()  # now `project` names a config group: the override means another thing
    with pytest.raises(config.ConfigError):
        fresh(line)
    with pytest.raises(config.ConfigError):
        cached(line)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_among_the_configs_neither_hangs_nor_is_read(setup: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(setup / "recipes" / "zpipe.yaml")  # opening it to read would wait for a writer
    else:
        (setup / "recipes" / "zero.yaml").symlink_to("/dev/zero")  # reading it would never end
    out = subprocess.run([sys.executable, "-m", "cvops", "recipe=mine", "--cfg", "job"], cwd=setup,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "project: mine" in out.stdout, out.stderr


def test_a_plugin_schema_is_composed_every_time(setup: Path) -> None:
    """A schema from the ConfigStore other than cvops' own or Hydra's core (a sweeper, a launcher, a stage
    plug-in) is code whose defaults may read a data file or the machine: such a composition is not stored."""
    line = ["recipe=mine", "hydra/launcher=joblib"]
    assert same(cached(line), fresh(line)) and cached(line).hydra.launcher.n_jobs == -1
    assert not list(composecache.cache_dir().glob("*.pkl"))


def test_a_warning_while_composing_is_shown_on_every_run(setup: Path) -> None:
    line = ["recipe=mine", f"hydra.searchpath=[recipes://{setup / 'recipes'},file://{setup / 'nowhere'}]"]
    for _ in range(2):
        with pytest.warns(UserWarning, match="is not available"):
            cached(line)
    assert not list(composecache.cache_dir().glob("*.pkl"))


def test_interpreter_options_are_in_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -W error -m cvops ...`` turns a composition's warning into an error: another key."""
    base = composecache.key(["recipe=mine"], "code")
    monkeypatch.setattr(sys, "warnoptions", ["error"])
    assert composecache.key(["recipe=mine"], "code") != base
