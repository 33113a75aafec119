"""The model registry: named aliases per project pointing at export artifacts, with their history.

The commands ``cvops promote``, ``cvops models`` and ``cvops rollback`` read and change it through
:class:`Registry`. It lives beside the artifacts in the store, one folder per project::

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

In an ``s3://`` store the same two files live in the bucket and are written under a build lease
(:mod:`cvops.store.s3`) instead of a file lock.
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

from cvops.store.base import FINGERPRINT, Artifact, Store, write_json_atomic
from cvops.errors import UserError

#: Alias and project names: they become keys and a folder name, so no separators, no dot-dot, no spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: Evaluate metrics recorded with a promotion (those the evaluate artifact has).
EVAL_KEYS = ("mAP", "mAP50", "mAP75", "val_mAP", "val_mAP50", "segm_mAP", "segm_mAP50")
#: Export metrics recorded with a promotion.
EXPORT_KEYS = ("gate", "gate_split", "torch_map", "onnx_map", "map_drop", "int8_map", "int8_map_drop", "onnx_ms",
               "int8_ms", "onnx_speedup", "int8_speedup", "family", "batch", "masks", "segm_map_drop",
               "int8_segm_map_drop")


class RegistryError(UserError):
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

    def __init__(self, store: Store, project: str) -> None:
        self.store = store
        self.project = check_name("project", project)
        self.dir = Path(store.root) / "registry" / project
        self.history_file = self.dir / "history.jsonl"
        self.aliases_file = self.dir / "aliases.json"
        # an s3:// store: the registry lives in the bucket (every machine promotes and follows the same aliases)
        self.bucket: Optional[_Bucket] = _Bucket(store, project) if store.url else None
        #: lines of ``history.jsonl`` the last :meth:`history` could not read ("<file>:<line>: why")
        self.damage: List[str] = []

    def _read(self, path: Path) -> Optional[str]:
        raw = self._read_bytes(path)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def _read_bytes(self, path: Path) -> Optional[bytes]:
        if self.bucket is not None:
            return self.bucket.read_bytes(path.name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    # -- reading -----------------------------------------------------------------------------------
    def history(self, alias: Optional[str] = None) -> List[Event]:
        """Every event, oldest first (of one alias if given).

        The history is the record, so a line that is not an event is never fatal: it is skipped and
        named in :attr:`damage` (file and line number, and why: not UTF-8, not JSON, not an event, or a
        torn last line from a crash mid-append), and the valid records are used.
        """
        raw = self._read_bytes(self.history_file)
        self.damage = []
        if not raw:
            return []
        where = f"{self.bucket.key}/history.jsonl" if self.bucket is not None else str(self.history_file)
        lines = raw.split(b"\n")
        out = []
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            torn = no == len(lines)  # no newline after it: the append was cut short
            try:
                d = json.loads(line.decode("utf-8"))
                ev = Event.from_json(d) if isinstance(d, dict) else None
                why = "not a registry event (no alias and export)"
            except UnicodeDecodeError as e:
                ev, why = None, f"not UTF-8 text ({e.reason} at byte {e.start})"
            except (ValueError, TypeError):
                ev, why = None, "a torn last line (a crash while appending)" if torn else "not JSON"
            if ev is None or not isinstance(ev.alias, str) or not isinstance(ev.export, str) or \
                    not FINGERPRINT.fullmatch(ev.export):
                self.damage.append(f"{where}:{no}: {why if ev is None else 'not a registry event'}; skipped")
                continue
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
        check_export(export)
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
            there = self.store.get("export", target)
            if there is None:
                raise RegistryError(f"{alias} would roll back to export {target}, which is no longer in the store "
                                    f"{self.store} (removed by cvops store gc or by hand): a server following "
                                    f"{alias} could not load it; promote an export that exists instead "
                                    "(cvops models lists them)")
            check_export(there)
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


def check_export(export: Artifact) -> None:
    """Refuse an export folder whose manifest is another artifact's (a folder copied or renamed by hand).

    Raises:
        RegistryError: the manifest names another fingerprint or stage than the folder.
    """
    fp, stage = export.manifest.get("fingerprint"), export.manifest.get("stage")
    if fp != export.fingerprint or stage not in (None, "export"):
        raise RegistryError(f"{export.dir} holds the manifest of {stage or '?'} {fp}, not of export "
                            f"{export.fingerprint} (a folder copied or renamed by hand): promote the original, and "
                            "remove the copy")


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
    (:mod:`cvops.store.s3`) instead of a file lock."""

    def __init__(self, store: Any, project: str) -> None:
        self.store, self.fs, self.key = store, store.fs, f"{store.key}/registry/{project}"

    def read(self, name: str) -> Optional[str]:
        raw = self.read_bytes(name)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def read_bytes(self, name: str) -> Optional[bytes]:
        try:
            return self.fs.cat_file(f"{self.key}/{name}")
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


def describe(store: Store, export: Artifact) -> Dict[str, Any]:
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


def _evaluate_of(store: Store, train_fp: Optional[str]) -> Optional[Artifact]:
    """The newest evaluate artifact of ``train_fp`` (None: that model was not evaluated)."""
    if not train_fp:
        return None
    found = [a for a in store.artifacts("evaluate") if a.manifest.get("inputs", {}).get("train") == train_fp]
    return max(found, key=lambda a: str(a.manifest.get("created", "")), default=None)


def _project(export: Artifact) -> Optional[str]:
    return export.manifest.get("config", {}).get("project")


def find_export(store: Store, prefix: str, project: Optional[str] = None) -> Artifact:
    """The export whose fingerprint starts with ``prefix`` (at least 4 hex digits; unique in the store).

    Raises:
        RegistryError: no export, or several, match (the message lists candidates).
    """
    if not re.fullmatch(r"[0-9a-f]{4,64}", prefix or ""):
        raise RegistryError(f"--export {prefix!r}: give at least 4 hex digits of an export fingerprint "
                            "(cvops models recipe=... lists them)")
    hits = [a for a in store.artifacts("export", prefix) if a.fingerprint.startswith(prefix)]
    if project is not None:
        other = [a for a in hits if _project(a) != project]
        hits = [a for a in hits if _project(a) == project]
        if other and not hits:
            raise RegistryError(f"export {other[0].fingerprint} belongs to project {_project(other[0])}, not "
                                f"{project}: promote it with that project's recipe")
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = [a.fingerprint for a in store.artifacts("export")][:20]
        raise RegistryError(f"no export in {store} has a fingerprint starting with {prefix} (exports there: "
                            f"{', '.join(known) or 'none'})")
    raise RegistryError(f"--export {prefix} matches {len(hits)} exports ({', '.join(a.fingerprint for a in hits)}): "
                        "give more digits")


def projects(store: Store) -> List[str]:
    """The projects that have a registry in ``store`` (a folder or prefix ``registry/<project>/``), sorted."""
    if store.url:
        fs, key = store.fs, f"{store.key}/registry"  # type: ignore[attr-defined]
        try:
            names = [p.rsplit("/", 1)[-1] for p in fs.ls(key, detail=False, refresh=True)]
        except FileNotFoundError:
            return []
    else:
        try:
            names = [p.name for p in (store.root / "registry").iterdir() if p.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
    return sorted(n for n in names if NAME.fullmatch(n) and ".." not in n)


__all__ = ["Registry", "RegistryError", "Event", "describe", "find_export", "read_aliases", "parse_aliases", "check_export",
           "check_name", "projects", "EVAL_KEYS", "EXPORT_KEYS"]
