"""The model registry: named aliases per project pointing at export artifacts, with their history.

::

    cvops promote recipe=bccd --alias production -m "beats v3 on night images"
    cvops promote recipe=bccd --alias staging --export 3fa2      # an export by fingerprint prefix
    cvops models recipe=bccd                                     # aliases and history
    cvops rollback recipe=bccd --alias production                # back to the export before

It lives beside the artifact store, one folder per project::

    <store>/registry/<project>/
        history.jsonl   every promotion and rollback, one JSON object per line (appended, never rewritten)
        aliases.json    what each alias points at now (rewritten atomically; what ``cvops serve`` follows)
        .lock           taken while either is written

The history is the truth: an alias's current export is the top of a stack
that each promotion pushes and each rollback pops, so rolling back twice goes
back two promotions (not back and forth). ``aliases.json`` is that state
written out, so a server polls one small file. Every event carries what a
person deciding on a model wants to see later: the export's fingerprint, the
train and curate artifacts it came from, the dataset version, the export
gate and the evaluate metrics, the time, the user and a message.

Only the file operations here touch the store's folder, so a remote store
(issue #12) replaces them and nothing else.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from cvops.artifacts import Artifact, ArtifactStore, open_store, write_json_atomic

#: Alias and project names: they become keys and a folder name, so no separators, no dot-dot, no spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: An artifact fingerprint as the store names its folders.
FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")

#: Evaluate metrics recorded with a promotion (those the evaluate artifact has).
EVAL_KEYS = ("mAP", "mAP50", "mAP75", "val_mAP", "val_mAP50", "segm_mAP", "segm_mAP50")
#: Export metrics recorded with a promotion.
EXPORT_KEYS = ("gate", "gate_split", "torch_map", "onnx_map", "map_drop", "int8_map", "int8_map_drop", "onnx_ms",
               "int8_ms", "onnx_speedup", "int8_speedup", "family", "batch", "masks", "segm_map_drop",
               "int8_segm_map_drop")


class RegistryError(ValueError):
    """A registry request that cannot be done as asked (the message says why and what to do)."""


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise RegistryError(f"{kind} {name!r} is not a valid name: use letters, digits, '_', '-' and '.', starting "
                            "with a letter or digit, at most 64 characters (e.g. production, staging, canary-2)")
    return name


@dataclass
class Event:
    """One promotion or rollback (a line of ``history.jsonl``)."""

    action: str  # "promote" | "rollback"
    alias: str
    export: str  # the export fingerprint the alias points at after this event
    previous: Optional[str]
    time: str
    user: str
    message: str
    info: Dict[str, Any]  # train/curate fingerprints, dataset version, gate, metrics

    def to_json(self) -> Dict[str, Any]:
        return {"action": self.action, "alias": self.alias, "export": self.export, "previous": self.previous,
                "time": self.time, "user": self.user, "message": self.message, **self.info}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Event":
        known = ("action", "alias", "export", "previous", "time", "user", "message")
        return cls(*(d.get(k) for k in known), info={k: v for k, v in d.items() if k not in known})  # type: ignore[arg-type]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return os.environ.get("USER") or str(os.getuid())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    """The aliases and history of one project in one artifact store."""

    def __init__(self, store: ArtifactStore, project: str) -> None:
        self.store = store
        self.project = check_name("project", project)
        self.dir = Path(store.root) / "registry" / project
        self.history_file = self.dir / "history.jsonl"
        self.aliases_file = self.dir / "aliases.json"
        # an s3:// store: the registry lives in the bucket (every machine promotes and follows the same aliases)
        self.bucket: Optional[_Bucket] = _Bucket(store, project) if getattr(store, "url", None) else None

    def _read(self, path: Path) -> Optional[str]:
        if self.bucket is not None:
            return self.bucket.read(path.name)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    # -- reading -----------------------------------------------------------------------------------
    def history(self, alias: Optional[str] = None) -> List[Event]:
        """Every event, oldest first (of one alias if given). A torn last line (a crash mid-append) is skipped."""
        text = self._read(self.history_file)
        if not text:
            return []
        out = []
        for line in text.splitlines():
            try:
                d = json.loads(line)
                ev = Event.from_json(d) if isinstance(d, dict) else None
            except (ValueError, TypeError):
                ev = None
            if ev is None or not isinstance(ev.alias, str) or not isinstance(ev.export, str):
                continue  # a torn or foreign line: not an event
            if alias is None or ev.alias == alias:
                out.append(ev)
        return out

    def aliases(self) -> Dict[str, Dict[str, Any]]:
        """alias -> its current event (``aliases.json``; rebuilt from the history if that file is damaged)."""
        try:
            if self.bucket is not None:
                return parse_aliases(self._read(self.aliases_file), f"{self.bucket.key}/aliases.json")
            return read_aliases(self.aliases_file)
        except RegistryError:
            return self._state()

    def resolve(self, alias: str) -> Optional[str]:
        """The export fingerprint ``alias`` points at now (None: not set).

        Raises:
            RegistryError: the recorded value is not a fingerprint (a hand-edited or foreign file).
        """
        entry = self.aliases().get(check_name("alias", alias))
        if not entry:
            return None
        fp = entry.get("export")
        if not isinstance(fp, str) or not FINGERPRINT.fullmatch(fp):
            raise RegistryError(f"{self.aliases_file}: alias {alias} points at {str(fp)[:80]!r}, not an export "
                                "fingerprint; promote an export again to repair it")
        return fp

    # -- changing ----------------------------------------------------------------------------------
    def promote(self, alias: str, export: Artifact, message: str = "", force: bool = False) -> Event:
        """Point ``alias`` at ``export``.

        Raises:
            RegistryError: the export's gate did not pass (``force`` promotes it anyway), or the alias
                already points at it.
        """
        check_name("alias", alias)
        if _project(export) not in (None, self.project):
            raise RegistryError(f"export {export.fingerprint} belongs to project {_project(export)}, not {self.project}")
        info = describe(self.store, export)
        gate = info.get("gate")
        if gate != "pass" and not force:
            raise RegistryError(f"export {export.fingerprint} did not pass its gate (gate: {gate or 'not run'}); "
                                "promote it anyway with --force, or fix the export (its latency.md says why)")
        with self._locked():
            stack = self._stack(alias)
            if stack and stack[-1] == export.fingerprint:
                raise RegistryError(f"{alias} already points at export {export.fingerprint}")
            ev = Event("promote", alias, export.fingerprint, stack[-1] if stack else None, _now(), _user(),
                       message, info)
            self._record(ev)
        return ev

    def rollback(self, alias: str, message: str = "") -> Event:
        """Point ``alias`` back at the export it pointed at before its current one.

        Raises:
            RegistryError: the alias is not set, or has no earlier export.
        """
        check_name("alias", alias)
        with self._locked():
            stack = self._stack(alias)
            if not stack:
                raise RegistryError(f"alias {alias!r} is not set for project {self.project} (set: "
                                    f"{', '.join(self.aliases()) or 'none'}); cvops promote ... --alias {alias}")
            if len(stack) < 2:
                raise RegistryError(f"{alias} has no earlier export to roll back to (it points at {stack[-1]}, its "
                                    "first promotion); promote another export instead")
            target = stack[-2]
            earlier = next(e for e in reversed(self.history(alias)) if e.export == target)
            ev = Event("rollback", alias, target, stack[-1], _now(), _user(), message, dict(earlier.info))
            self._record(ev)
        return ev

    # -- internals ---------------------------------------------------------------------------------
    def _stack(self, alias: str) -> List[str]:
        stack: List[str] = []
        for ev in self.history(alias):
            if ev.action == "promote":
                stack.append(ev.export)
            elif ev.action == "rollback" and stack:
                stack.pop()
        return stack

    def _state(self) -> Dict[str, Dict[str, Any]]:
        """What every alias points at, from the history alone (the top of each alias's stack)."""
        events: Dict[str, List[Event]] = {}
        for ev in self.history():
            events.setdefault(ev.alias, []).append(ev)
        state: Dict[str, Dict[str, Any]] = {}
        for alias, evs in events.items():
            stack: List[Event] = []
            for ev in evs:
                if ev.action == "promote":
                    stack.append(ev)
                elif ev.action == "rollback" and stack:
                    stack.pop()
                    if stack:  # the rollback event itself describes the export it returned to
                        stack[-1] = ev
            if stack:
                state[alias] = stack[-1].to_json()
        return state

    def _record(self, ev: Event) -> None:
        """Append ``ev`` to the history (after a torn last line: on a line of its own), then rewrite
        ``aliases.json`` from the whole history, so a crash between the two is repaired by the next event."""
        line = (json.dumps(ev.to_json(), default=str) + "\n").encode("utf-8")
        if self.bucket is not None:  # under the bucket's lease (_locked): read, append, write back
            old = (self.bucket.read("history.jsonl") or "").encode("utf-8")
            self.bucket.write("history.jsonl", old + (b"\n" if old and not old.endswith(b"\n") else b"") + line)
            self.bucket.write("aliases.json", json.dumps(self._state(), indent=2).encode("utf-8"))
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.history_file, "a+b") as f:
            f.seek(0, os.SEEK_END)
            torn = False
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            f.write((b"\n" if torn else b"") + line)
            f.flush()
            os.fsync(f.fileno())
        write_json_atomic(self.aliases_file, self._state())

    def _locked(self) -> Any:
        if self.bucket is not None:
            return self.bucket.locked()
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".lock"), timeout=60)


def read_aliases(path: Path) -> Dict[str, Dict[str, Any]]:
    """``aliases.json`` (empty when absent; a damaged file is an error naming it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return parse_aliases(text, str(path))


def parse_aliases(text: Optional[str], where: str) -> Dict[str, Dict[str, Any]]:
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"{where} is not valid JSON ({e}); its history.jsonl beside it is the record: "
                            "delete aliases.json and promote again") from e
    return data if isinstance(data, dict) else {}


class _Bucket:
    """A project's registry files in an object store (``<store>/registry/<project>/``), written under a lease
    (:mod:`cvops.objectstore`) instead of a file lock."""

    def __init__(self, store: Any, project: str) -> None:
        self.store, self.fs, self.key = store, store.fs, f"{store.key}/registry/{project}"

    def read(self, name: str) -> Optional[str]:
        try:
            return self.fs.cat_file(f"{self.key}/{name}").decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.key}/{name}", data)

    @contextmanager
    def locked(self) -> Iterator[None]:
        import uuid

        lease = self.store._acquire(f"{self.key}/.lock", uuid.uuid4().hex[:12], 60.0, lambda: None, lambda: False)
        try:
            yield
        finally:
            lease.release()


def describe(store: ArtifactStore, export: Artifact) -> Dict[str, Any]:
    """What a promotion records about ``export``: its lineage, dataset version, gate and the evaluate metrics."""
    inputs = dict(export.manifest.get("inputs", {}))
    info: Dict[str, Any] = {"project": _project(export), "train": inputs.get("train"), "curate": inputs.get("curate"),
                            "created": export.manifest.get("created")}
    m = export.metrics
    info.update({k: m[k] for k in EXPORT_KEYS if k in m})
    curate = store.get("curate", inputs["curate"]) if inputs.get("curate") else None
    if curate is not None:
        info["dataset_version"] = curate.metrics.get("dataset_version")
        info["dataset"] = curate.metrics.get("dataset_name")
    ev = _evaluate_of(store, inputs.get("train"))
    if ev is not None:
        info["evaluate"] = ev.fingerprint
        info.update({k: ev.metrics[k] for k in EVAL_KEYS if k in ev.metrics})
    return info


def _evaluate_of(store: ArtifactStore, train_fp: Optional[str]) -> Optional[Artifact]:
    """The newest evaluate artifact of ``train_fp`` (None: that model was not evaluated)."""
    if not train_fp:
        return None
    found = [a for a in _artifacts(store, "evaluate") if a.manifest.get("inputs", {}).get("train") == train_fp]
    return max(found, key=lambda a: str(a.manifest.get("created", "")), default=None)


def _project(export: Artifact) -> Optional[str]:
    return export.manifest.get("config", {}).get("project")


def _artifacts(store: ArtifactStore, stage: str, prefix: str = "") -> Iterator[Artifact]:
    """The complete artifacts of ``stage`` whose fingerprint starts with ``prefix``."""
    if getattr(store, "url", None):  # an object store: its committed artifacts are listed in the bucket
        try:
            names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.key}/{stage}", detail=False, refresh=True))
        except FileNotFoundError:
            return
        for name in names:
            if re.fullmatch(r"[0-9a-f]{8,64}", name) and name.startswith(prefix):  # fetched only if it matches
                art = store.get(stage, name)
                if art is not None:
                    yield art
        return
    root = Path(store.root) / stage
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        art = store.get(stage, d.name) if d.is_dir() else None
        if art is not None:
            yield art


def find_export(store: ArtifactStore, prefix: str, project: Optional[str] = None) -> Artifact:
    """The export whose fingerprint starts with ``prefix`` (at least 4 hex digits; unique in the store).

    Raises:
        RegistryError: no export, or several, match (the message lists candidates).
    """
    if not re.fullmatch(r"[0-9a-f]{4,64}", prefix or ""):
        raise RegistryError(f"--export {prefix!r}: give at least 4 hex digits of an export fingerprint "
                            "(cvops models recipe=... lists them)")
    hits = [a for a in _artifacts(store, "export", prefix) if a.fingerprint.startswith(prefix)]
    if project is not None:
        other = [a for a in hits if _project(a) != project]
        hits = [a for a in hits if _project(a) == project]
        if other and not hits:
            raise RegistryError(f"export {other[0].fingerprint} belongs to project {_project(other[0])}, not "
                                f"{project}: promote it with that project's recipe")
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = [a.fingerprint for a in _artifacts(store, "export")][:20]
        raise RegistryError(f"no export in {store} has a fingerprint starting with {prefix} (exports there: "
                            f"{', '.join(known) or 'none'})")
    raise RegistryError(f"--export {prefix} matches {len(hits)} exports ({', '.join(a.fingerprint for a in hits)}): "
                        "give more digits")


# -- the command line: cvops promote / models / rollback ---------------------------------------------------
def _parse(prog: str, argv: List[str], alias: bool) -> Any:
    import argparse

    ap = argparse.ArgumentParser(prog=f"cvops {prog}", description=__doc__.split("::")[0].strip())
    if alias:
        ap.add_argument("--alias", required=True, help="e.g. production, staging")
        ap.add_argument("-m", "--message", default="", help="why (kept in the history)")
    if prog == "promote":
        ap.add_argument("--export", default=None, help="an export fingerprint (prefix); default: the recipe's")
        ap.add_argument("--force", action="store_true", help="promote an export whose gate did not pass")
    return ap.parse_known_args(argv)


def _open(overrides: List[str]) -> Any:
    from cvops.config import compose_config, preflight

    preflight(overrides, check_missing=False)
    cfg = compose_config(overrides)
    return cfg, Registry(open_store(cfg.paths), str(cfg.project))


def _recipe_export(cfg: Any, store: ArtifactStore, overrides: List[str]) -> Artifact:
    from cvops.config import ConfigError
    from cvops.runner import fingerprints

    fp = fingerprints(cfg)["export"]["fingerprint"]
    art = store.get("export", fp)
    if art is None:
        raise ConfigError(f"no export for this config (export {fp}) in {store.root}; build it first: cvops "
                          f"{' '.join(overrides)} stages=[curate,train,evaluate,export], or name one with --export")
    return art


def _fail(e: Exception) -> int:
    import sys

    print(f"cvops: error: {e}", file=sys.stderr)
    return 2


def cmd_promote(argv: List[str]) -> int:
    """``cvops promote recipe=X --alias A [--export FP] [-m msg] [--force]``."""
    from cvops.config import ConfigError

    args, overrides = _parse("promote", argv, alias=True)
    try:
        cfg, reg = _open(overrides)
        export = (find_export(reg.store, args.export, reg.project) if args.export
                  else _recipe_export(cfg, reg.store, overrides))
        ev = reg.promote(args.alias, export, args.message, force=args.force)
    except (ConfigError, RegistryError, OSError) as e:
        return _fail(e)
    was = f" (was {ev.previous})" if ev.previous else ""
    print(f"{reg.project}: {ev.alias} -> export {ev.export}{was}; {_metrics_text(ev.info)}")
    return 0


def cmd_rollback(argv: List[str]) -> int:
    """``cvops rollback recipe=X --alias A [-m msg]``."""
    from cvops.config import ConfigError

    args, overrides = _parse("rollback", argv, alias=True)
    try:
        _, reg = _open(overrides)
        ev = reg.rollback(args.alias, args.message)
    except (ConfigError, RegistryError, OSError) as e:
        return _fail(e)
    print(f"{reg.project}: {ev.alias} -> export {ev.export} (rolled back from {ev.previous}); "
          f"{_metrics_text(ev.info)}")
    return 0


def cmd_models(argv: List[str]) -> int:
    """``cvops models recipe=X``: each alias and what it points at, then the history, newest first."""
    from cvops.config import ConfigError

    _, overrides = _parse("models", argv, alias=False)
    try:
        _, reg = _open(overrides)
        current, history = reg.aliases(), reg.history()
    except (ConfigError, RegistryError, OSError) as e:
        return _fail(e)
    for line in table(reg.project, current, history):
        print(line)
    return 0


def _metrics_text(info: Dict[str, Any]) -> str:
    parts = [f"dataset {info['dataset_version']}" if info.get("dataset_version") else "",
             f"gate {info['gate']}" if info.get("gate") else "",
             f"test mAP {info['mAP']:.3f}" if isinstance(info.get("mAP"), (int, float)) else "",
             f"mAP50 {info['mAP50']:.3f}" if isinstance(info.get("mAP50"), (int, float)) else ""]
    return ", ".join(p for p in parts if p)


def table(project: str, current: Dict[str, Dict[str, Any]], history: List[Event]) -> List[str]:
    """The lines of ``cvops models``."""
    if not current:
        return [f"{project}: no aliases yet (cvops promote recipe=... --alias production)"]
    lines = [f"{project}: aliases"]
    w = max(len(a) for a in current)
    for alias, e in sorted(current.items()):
        lines.append(f"  {alias:<{w}}  {e['export']}  {_metrics_text(e)}  ({e.get('action')} {e.get('time')} by "
                     f"{e.get('user')})")
    lines.append("history (newest first)")
    for ev in reversed(history):
        msg = f"  \"{ev.message}\"" if ev.message else ""
        lines.append(f"  {ev.time}  {ev.action:<8}  {ev.alias:<{w}}  {ev.export}  <- {ev.previous or '-'}  "
                     f"{ev.user}{msg}")
    return lines


__all__ = ["Registry", "RegistryError", "Event", "describe", "find_export", "read_aliases", "check_name"]
