"""One tick of the loop: triggers -> challenger -> champion vs challenger on the same data -> decision.

::

    cvops loop recipe=quickstart                 # one tick; cron, a systemd timer or a CronJob runs it
    cvops loop recipe=quickstart --force         # a challenger even without a trigger

A tick holds the project's lease (``<store>/loop/<project>/.lease``, an OS file lock: a crashed tick's
lease goes with its process); a second tick exits 0 naming the holder. Then:

1. **Triggers**: reviewed samples not yet in the champion's data (``loop.triggers.min_reviewed``), the
   newest monitor verdict on the champion (``on_drift``), the recipe's data moved (``new_data``: its
   curate fingerprint is not the champion's), ``--force``. None: "nothing to do", and why.
2. **Challenger**: the recipe, plus the reviewed export in ``data.extra``, plus ``loop.retrain``,
   through curate, train, evaluate and export (cached by content as always: the reviewed samples are
   split like any data, so some are held out).
3. **Champion vs challenger** on the same images: the **frozen benchmark** (``loop.benchmark``, or the
   test split of the champion's dataset version at the first tick, copied and pinned by its hash) and
   the **new data** (the reviewed images the challenger held out), per class, with both exports run
   by ONNX Runtime; plus the challenger's export gate and the latency ratio.
4. **Policy** (``loop.policy``) decides; the champion's alias is promoted to the challenger, or not.
5. **Record**: ``<store>/loop/<project>/<tick>/decision.json`` and ``report.html``; the tick id is
   the hash of its inputs (champion, challenger, benchmark, policy), so a tick with the same inputs
   as a decided one does no work and says so.

Safety: an export whose gate failed is never promoted; a benchmark image the challenger trained on
refuses the comparison (the decision names the images); any failure leaves the alias untouched, with
the reason in the decision.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from cvops.errors import UserError

CHALLENGER_STAGES = ["curate", "train", "evaluate", "export"]


class LoopError(UserError):
    """A tick that cannot start (no champion, a store the loop does not support): the message says why."""


# ------------------------------------------------------------------ the lease
@contextmanager
def lease(folder: Path) -> Iterator[Optional[Dict[str, Any]]]:
    """Hold the project's tick lease; yields None when held, else who holds it (another tick)."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lease"))
    who = folder / "holder.json"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            yield json.loads(who.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            yield {"pid": "?", "host": "?", "since": "?"}
        return
    try:
        who.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        yield None
    finally:
        lock.release()


# ------------------------------------------------------------------ the tick
def tick(overrides: Sequence[str], force: bool = False, say: Any = print) -> Dict[str, Any]:
    """One tick; returns what it did (``status``: busy | idle | decided | already-decided | failed)."""
    from cvops.session import open_recipe
    from cvops.store import FolderStore
    from cvops.store.registry import Registry

    recipe = open_recipe(overrides, check_missing=False)
    cfg, store = recipe.cfg, recipe.store
    if not isinstance(store, FolderStore):
        raise LoopError(f"cvops loop runs on a folder store for now; {store} is a bucket (paths.store)")
    project = str(cfg.project)
    root = store.root / "loop" / project
    t0 = time.time()
    with lease(root) as holder:
        if holder is not None:
            say(f"cvops loop: a tick of {project} is running (pid {holder.get('pid')} on {holder.get('host')} "
                f"since {holder.get('since')}); nothing to do here")
            return {"status": "busy", "holder": holder}
        reg = Registry(store, project)
        alias = str(cfg.loop.alias)
        champion_fp = reg.resolve(alias)
        if champion_fp is None:
            raise LoopError(f"alias {alias} of {project} names no export: the loop needs a champion. Promote one "
                            f"first: cvops promote {' '.join(overrides)} --alias {alias}")
        champion = store.get("export", champion_fp)
        if champion is None:
            raise LoopError(f"alias {alias} names export {champion_fp}, which is not in the store {store}; "
                            "promote an export that exists")
        pending = _pending(root)
        if pending is not None:
            return _shadow_tick(recipe, reg, root, champion, pending, say, t0)
        triggers, reviewed, why_not = _triggers(recipe, champion, force)
        if not triggers:
            say(f"cvops loop: nothing to do for {project} ({alias} = export {champion_fp}): {'; '.join(why_not)} "
                f"({time.time() - t0:.1f} s)")
            return {"status": "idle", "champion": champion_fp, "why": why_not}
        say(f"cvops loop: {project}: {', '.join(t['trigger'] for t in triggers)} -> a challenger")
        ch_overrides = _challenger_overrides(list(overrides), cfg, reviewed,
                                             champion.manifest.get("inputs", {}).get("curate"),
                                             _champion_weights(store, champion) if cfg.loop.warm_start else None)
        return _decide(recipe, reg, root, champion, triggers, reviewed, ch_overrides, say)


def _triggers(recipe: Any, champion: Any, force: bool) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]],
                                                                  List[str]]:
    """What starts a challenger (each with its evidence), the reviewed export, and why each did not fire."""
    cfg, store = recipe.cfg, recipe.store
    lt = cfg.loop.triggers
    out: List[Dict[str, Any]] = []
    why_not: List[str] = []
    reviewed = _reviewed(recipe)
    champ_extra = _extra_paths(store, champion)
    if reviewed is None:
        why_not.append("no reviewed samples")
    elif reviewed["path"] in champ_extra:
        why_not.append(f"the {reviewed['images']} reviewed sample(s) are in the champion's data already")
    elif reviewed["images"] < int(lt.min_reviewed):
        why_not.append(f"{reviewed['images']} reviewed sample(s), fewer than loop.triggers.min_reviewed="
                       f"{lt.min_reviewed}")
    else:
        out.append({"trigger": "reviewed", "images": reviewed["images"], "export": reviewed["path"]})
    if lt.on_drift:
        verdict = _newest_monitor(store, champion.fingerprint)
        if verdict is not None and verdict.metrics.get("drift_detected"):
            out.append({"trigger": "drift", "monitor": verdict.fingerprint,
                        "features": verdict.metrics.get("drift_features")})
        else:
            why_not.append("no drift in the newest monitor verdict on the champion" if verdict is not None
                           else "no monitor verdict on the champion")
    if lt.new_data:
        here = recipe.fingerprint("curate")
        theirs = champion.manifest.get("inputs", {}).get("curate")
        if theirs and here != theirs and not champ_extra:
            out.append({"trigger": "new_data", "curate": here, "champion_curate": theirs})
        else:
            why_not.append("the recipe's data is the champion's")
    if force:
        out.append({"trigger": "force"})
    return out, reviewed, why_not


def _reviewed(recipe: Any) -> Optional[Dict[str, Any]]:
    """The store's reviewed samples as a COCO version (``cvops review``'s export), or None.

    With ``FIFTYONE_DATABASE_URI`` (a MongoDB server), the review dataset's state (reviewed samples and
    their newest change) is read with pymongo first: unchanged since the last tick, the last export is
    reused without importing FiftyOne (seconds), which keeps an idle tick cheap.
    """
    from cvops.annotate.review import review_dataset

    cfg = recipe.cfg
    name = review_dataset(str(cfg.project), recipe.store.id, cfg.monitor.review_dataset)
    cache = recipe.store.root / "loop" / str(cfg.project) / "review_state.json"
    settings = [name, float(cfg.confidence), float(cfg.annotate.duplicate_iou),
                list(cfg.data.classes) if cfg.data.classes else None]
    state = _review_state(name)
    if state is not None:
        try:
            last = json.loads(cache.read_text())
        except (OSError, ValueError):
            last = {}
        if last.get("state") == state and last.get("settings") == settings and \
                (last.get("export") is None or Path(last["export"]["path"]).is_file()):
            return last.get("export")
    from cvops.annotate.review import ReviewError, export_reviewed

    out_root = Path(cfg.paths.store).expanduser().absolute().parent / "reviewed" / str(cfg.project)
    try:
        found = export_reviewed(name, out_root, settings[3], confidence=settings[1], duplicate_iou=settings[2])
        export = {k: found[k] for k in ("path", "images", "boxes", "version")}
    except ReviewError:
        export = None
    if state is not None:
        from cvops.store.base import write_json_atomic

        write_json_atomic(cache, {"state": state, "settings": settings, "export": export}, durable=False)
    return export


def _review_state(name: str) -> Optional[List[Any]]:
    """``[reviewed samples, newest change]`` of a FiftyOne dataset read straight from its MongoDB server (None:
    no ``FIFTYONE_DATABASE_URI``, or anything unexpected: the caller asks FiftyOne itself)."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if not uri:
        return None
    try:
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000)
        try:
            db = client[os.environ.get("FIFTYONE_DATABASE_NAME", "fiftyone")]
            doc = db.datasets.find_one({"name": name}, {"sample_collection_name": 1})
            if doc is None:
                return [0, None]
            coll = db[doc["sample_collection_name"]]
            n = coll.count_documents({"tags": "reviewed"})
            newest = coll.find_one({}, {"last_modified_at": 1}, sort=[("last_modified_at", -1)])
            return [int(n), str(newest.get("last_modified_at")) if newest else None]
        finally:
            client.close()
    except Exception:
        return None


def _extra_paths(store: Any, export: Any) -> List[str]:
    """The ``data.extra`` paths of the curate artifact behind ``export``."""
    cur = store.get("curate", export.manifest.get("inputs", {}).get("curate", ""))
    extra = (cur.manifest.get("config", {}).get("data", {}) or {}).get("extra") if cur else None
    return [str(e.get("path")) for e in extra or [] if isinstance(e, dict)]


def _newest_monitor(store: Any, export_fp: str) -> Optional[Any]:
    found = [a for a in store.artifacts("monitor") if a.manifest.get("inputs", {}).get("export") == export_fp]
    return max(found, key=lambda a: str(a.manifest.get("created", "")), default=None)


def _champion_weights(store: Any, champion: Any) -> Optional[str]:
    """The champion's trained checkpoint (its train artifact's), the challenger's start (``loop.warm_start``)."""
    train = store.get("train", champion.manifest.get("inputs", {}).get("train", ""))
    if train is None or "checkpoint" not in train.manifest.get("artifacts", {}):
        return None
    path = train.path("checkpoint")
    return str(path) if Path(path).is_file() else None


def _challenger_overrides(overrides: List[str], cfg: Any, reviewed: Optional[Dict[str, Any]],
                          champion_curate: Optional[str], weights: Optional[str] = None) -> List[str]:
    from omegaconf import OmegaConf

    from cvops.annotate.review import curate_overrides, hydra_value

    line = [o for o in overrides if not o.startswith(("stages=", "curate.split.keep="))]
    if weights and not cfg.model.load_from:  # loop.warm_start: the champion's weights (loop.retrain may override)
        line.append(f"model.load_from={hydra_value(weights)}")
    if champion_curate:  # the champion's images keep their split: its test split stays out of training
        line.append(f"curate.split.keep={champion_curate}")
    if reviewed is not None:
        out_root = Path(reviewed["path"]).parent.parent
        extra = OmegaConf.to_container(cfg.data.extra, resolve=True) or []
        line = curate_overrides(line, extra, reviewed["path"], out_root)
    return [*line, *[str(o) for o in cfg.loop.retrain]]


# ------------------------------------------------------------------ champion vs challenger
def _decide(recipe: Any, reg: Any, root: Path, champion: Any, triggers: List[Dict[str, Any]],
            reviewed: Optional[Dict[str, Any]], ch_overrides: List[str], say: Any) -> Dict[str, Any]:
    from cvops.session import open_recipe

    cfg, store = recipe.cfg, recipe.store
    policy = json.loads(json.dumps(_plain(cfg.loop.policy)))
    t0 = time.time()
    record: Dict[str, Any] = {"project": str(cfg.project), "alias": str(cfg.loop.alias),
                              "champion": champion.fingerprint, "triggers": triggers, "policy": policy,
                              "challenger_overrides": ch_overrides}
    try:
        ch_fp = open_recipe(ch_overrides, check_missing=False).fingerprint("export")
        if store.get("export", ch_fp) is None:  # built already (a decided tick, a resumed one): no child run
            _build(ch_overrides)
        challenger = store.get("export", ch_fp)
        if challenger is None:
            raise LoopError("the challenger's run ended without an export artifact")
        bench_path, bench_sha = _benchmark(root, store, reg, champion, cfg)
        key = hashlib.sha256(json.dumps([champion.fingerprint, challenger.fingerprint, bench_sha, policy],
                                        sort_keys=True).encode()).hexdigest()[:12]
        folder = root / key
        if (folder / "decision.json").is_file():
            done = json.loads((folder / "decision.json").read_text())
            say(f"cvops loop: the same inputs were decided by tick {key} ({done['decision']}): nothing to do")
            return {"status": "already-decided", "tick": key, "decision": done["decision"]}
        record.update(challenger=challenger.fingerprint, tick=key, benchmark={"path": str(bench_path),
                                                                            "sha256": bench_sha})
        overlap = _overlap(bench_path, store, challenger)
        if overlap:
            return _finish(folder, record, "rejected", [f"the benchmark shares {len(overlap)} image(s) with the "
                                                        f"challenger's training data (first: {overlap[0]}); a "
                                                        "comparison there proves nothing"], {}, reg, say, t0,
                           extra={"overlap": overlap[:50]})
        new_path = _new_data(root / key, store, challenger, reviewed)
        figures = {"benchmark": {"champion": _score(champion, bench_path), "challenger": _score(challenger, bench_path)}}
        if new_path is not None:
            figures["new_data"] = {"champion": _score(champion, new_path), "challenger": _score(challenger, new_path)}
        figures["gate"] = {"challenger": challenger.metrics.get("gate")}
        figures["latency_ms"] = side_by_side(champion, challenger, bench_path)
        decision, reasons = judge(figures, policy)
        return _finish(folder, record, decision, reasons, figures, reg, say, t0, challenger=challenger,
                       shadow=_plain(cfg.loop.shadow))
    except Exception as e:  # the alias is untouched; the decision says why
        key = hashlib.sha256(json.dumps([champion.fingerprint, str(e), time.time()]).encode()).hexdigest()[:12]
        record.update(tick=key, error=f"{type(e).__name__}: {e}")
        return _finish(root / key, record, "failed", [f"{type(e).__name__}: {e}"], {}, reg, say, t0)


def _build(overrides: List[str]) -> None:
    """The challenger's stages, as ``cvops <overrides> stages=[...]`` in a child process: the command line's
    console and logs, and every artifact cached by content. ``train.resume=true``: a tick killed mid-training
    leaves the challenger's checkpoints, and the next tick continues from them (the child dies with the tick,
    so two never train at once).

    Raises:
        LoopError: the run failed (its last lines say why).
    """
    import collections
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cvops", *overrides, "train.resume=true", f"stages=[{','.join(CHALLENGER_STAGES)}]"]
    tail: Any = collections.deque(maxlen=3)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.strip():
                tail.append(line.strip())
            if line.startswith("  ") and any(line.lstrip().startswith(st) for st in CHALLENGER_STAGES):
                print(f"  challenger {line.strip()}", flush=True)
    if proc.returncode != 0:
        raise LoopError(f"the challenger's run failed (exit {proc.returncode}): {' | '.join(tail)}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the tick dies (Linux; elsewhere the child outlives a killed tick
    and its store lock makes the next tick wait for it)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pending(root: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((root / "pending.json").read_text())
    except (OSError, ValueError):
        return None


def _shadow_tick(recipe: Any, reg: Any, root: Path, champion: Any, pending: Dict[str, Any], say: Any,
                 t0: float) -> Dict[str, Any]:
    """A challenger waiting on the shadow alias: wait for its requests, then promote it or not."""
    from cvops.requestlog import request_log_dir
    from cvops.serve.shadow import SHADOW_LOG, agreement
    from cvops.store.base import write_json_atomic

    cfg, store = recipe.cfg, recipe.store
    folder = root / pending["tick"]
    record = json.loads((folder / "decision.json").read_text())
    if champion.fingerprint != pending["champion"]:  # someone promoted another model meanwhile: start over
        (root / "pending.json").unlink()
        record.update(decision="rejected", reasons=[f"{pending['alias']} moved to {champion.fingerprint} while the "
                                                    "challenger was in shadow; the next tick compares again"])
        write_json_atomic(folder / "decision.json", record, durable=True)
        say(f"cvops loop: {record['reasons'][0]}")
        return {"status": "decided", "decision": "rejected", "tick": pending["tick"]}
    log = Path(request_log_dir(cfg.serve.log_dir, store.root, cfg.project)) / SHADOW_LOG
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    ev = agreement(lines, pending["champion"], pending["challenger"])
    need = int(pending["requests"])
    if ev["requests"] < need:
        say(f"cvops loop: challenger {pending['challenger']} is on {cfg.loop.shadow.alias}: {ev['requests']} of "
            f"{need} shadow requests logged ({log}); waiting ({time.time() - t0:.1f} s)")
        return {"status": "waiting", "tick": pending["tick"], "shadow_requests": ev["requests"]}
    reasons = [f"shadow: {ev['requests']} requests, mean box F1 against the champion {ev['mean_f1']:.3f} (at "
               f"least {cfg.loop.shadow.min_f1})"]
    ok = ev["mean_f1"] is not None and ev["mean_f1"] >= float(cfg.loop.shadow.min_f1)
    if ev.get("live_ms") and ev.get("shadow_ms"):
        ratio = ev["shadow_ms"] / ev["live_ms"]
        reasons.append(f"shadow latency {ratio:.2f}x the champion's on the same requests (limit "
                       f"{cfg.loop.policy.max_latency_ratio}x)")
        ok = ok and ratio <= float(cfg.loop.policy.max_latency_ratio)
    record.setdefault("figures", {})["shadow"] = ev
    record["reasons"] = [*record.get("reasons", []), *reasons]
    if ok:
        try:
            challenger = store.get("export", pending["challenger"])
            if challenger is None:
                raise LoopError(f"export {pending['challenger']} is no longer in the store")
            e = reg.promote(pending["alias"], challenger,
                            f"cvops loop tick {pending['tick']}: {'; '.join(reasons)}"[:500])
            record.update(decision="promoted", registry_event={"time": e.time, "previous": e.previous})
        except Exception as e:  # production untouched; the decision says why
            record.update(decision="failed", error=f"{type(e).__name__}: {e}")
            record["reasons"].append(f"the promotion failed: {type(e).__name__}: {e}")
    else:
        record.update(decision="rejected")
    write_json_atomic(folder / "decision.json", record, durable=True)
    (root / "pending.json").unlink()
    (folder / "report.html").write_text(_html(record), encoding="utf-8")
    say(f"cvops loop: {record['decision'].upper()} challenger {pending['challenger']} after shadow: "
        f"{'; '.join(reasons)}")
    say(f"  decision: {folder / 'decision.json'}  report: {folder / 'report.html'}")
    return {"status": "decided", "decision": record["decision"], "tick": pending["tick"]}


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def judge(figures: Dict[str, Any], policy: Dict[str, Any]) -> Tuple[str, List[str]]:
    """``("promoted" | "rejected", reasons)`` for the figures under the policy (every reason is a sentence)."""
    metric = str(policy["metric"])
    reasons: List[str] = []
    ok = True
    if figures["gate"]["challenger"] != "pass":
        ok = False
        reasons.append(f"the challenger's export gate did not pass ({figures['gate']['challenger']})")
    b = figures["benchmark"]
    drop = b["champion"][metric] - b["challenger"][metric]
    if drop > float(policy["max_regression"]):
        ok = False
        reasons.append(f"benchmark {metric} fell {drop:+.3f} (champion {b['champion'][metric]:.3f}, challenger "
                       f"{b['challenger'][metric]:.3f}; limit {policy['max_regression']})")
    else:
        reasons.append(f"benchmark {metric}: champion {b['champion'][metric]:.3f}, challenger "
                       f"{b['challenger'][metric]:.3f} (within {policy['max_regression']})")
    for cls, ap in b["champion"]["per_class_AP"].items():
        new = b["challenger"]["per_class_AP"].get(cls)
        if ap is not None and new is not None and ap - new > float(policy["max_class_regression"]):
            ok = False
            reasons.append(f"benchmark AP of '{cls}' fell {ap - new:.3f} (limit {policy['max_class_regression']})")
    where = "new_data" if "new_data" in figures else "benchmark"
    g = figures[where]
    gain = g["challenger"][metric] - g["champion"][metric]
    if gain < float(policy["min_gain"]):
        ok = False
        reasons.append(f"{where.replace('_', ' ')} {metric} gain {gain:+.3f} is below loop.policy.min_gain="
                       f"{policy['min_gain']}")
    else:
        reasons.append(f"{where.replace('_', ' ')} {metric} gain {gain:+.3f} (at least {policy['min_gain']})")
    lat = figures["latency_ms"]
    if lat.get("champion") and lat.get("challenger"):
        ratio = float(lat["challenger"]) / float(lat["champion"])
        if ratio > float(policy["max_latency_ratio"]):
            ok = False
            reasons.append(f"latency {ratio:.2f}x the champion's (limit {policy['max_latency_ratio']}x)")
    return ("promoted" if ok else "rejected"), reasons


def _finish(folder: Path, record: Dict[str, Any], decision: str, reasons: List[str], figures: Dict[str, Any],
            reg: Any, say: Any, t0: float, challenger: Any = None, extra: Optional[Dict[str, Any]] = None,
            shadow: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from cvops.store.base import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    record.update(decision=decision, reasons=reasons, figures=figures, seconds=round(time.time() - t0, 1),
                  time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}))
    if decision == "promoted" and challenger is not None and shadow and int(shadow["requests"]) > 0:
        # passed offline: first on the shadow alias, beside the champion on live traffic; a later tick decides
        ev = reg.promote(str(shadow["alias"]), challenger, f"cvops loop tick {record['tick']}: shadow")
        record.update(decision="staged", staged={"alias": shadow["alias"], "requests": int(shadow["requests"]),
                                                 "previous": ev.previous})
        decision = "staged"
        write_json_atomic(folder.parent / "pending.json", {"tick": record["tick"], "champion": record["champion"],
                                                           "challenger": challenger.fingerprint,
                                                           "alias": record["alias"], "shadow_alias": shadow["alias"],
                                                           "requests": int(shadow["requests"])})
        reasons = [*reasons, f"on {shadow['alias']} until {shadow['requests']} shadow requests are logged"]
        record["reasons"] = reasons
    elif decision == "promoted" and challenger is not None:
        ev = reg.promote(record["alias"], challenger, f"cvops loop tick {record['tick']}: {'; '.join(reasons)}"[:500])
        record["registry_event"] = {"time": ev.time, "previous": ev.previous}
    record["reproduce"] = [f"cvops {' '.join(record.get('challenger_overrides', []))} "
                           f"stages=[{','.join(CHALLENGER_STAGES)}]",
                           f"cvops loop {' '.join(o for o in record.get('challenger_overrides', []) if o.startswith(('recipe=', 'project=', 'paths.')))}"]
    write_json_atomic(folder / "decision.json", record, durable=True)
    (folder / "report.html").write_text(_html(record), encoding="utf-8")
    say(f"cvops loop: {decision.upper()} challenger {record.get('challenger', '-')} vs champion "
        f"{record['champion']}: {'; '.join(reasons)}")
    say(f"  decision: {folder / 'decision.json'}  report: {folder / 'report.html'}")
    return {"status": "decided" if decision != "failed" else "failed", "decision": decision, "tick": record["tick"],
            "reasons": reasons, "path": str(folder / "decision.json")}


# ------------------------------------------------------------------ the data both are scored on
def _benchmark(root: Path, store: Any, reg: Any, champion: Any, cfg: Any) -> Tuple[Path, str]:
    """The frozen benchmark (a COCO file) and its hash: ``loop.benchmark``, or the champion's test split
    copied at the first tick and pinned (``<loop>/benchmark.json``); a pinned file that changed is refused."""
    if cfg.loop.benchmark:
        path = Path(str(cfg.loop.benchmark)).expanduser().absolute()
        try:
            images = json.loads(path.read_text(encoding="utf-8"))["images"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LoopError(f"loop.benchmark={cfg.loop.benchmark}: not a readable COCO file with 'images' "
                            f"({type(e).__name__}: {e}); give a COCO detection file, or null for the champion's "
                            "test split") from e
        if not images:
            raise LoopError(f"loop.benchmark={cfg.loop.benchmark}: the COCO file has no images")
        return path, _sha(path)
    pin = root / "benchmark.json"
    if pin.is_file():
        rec = json.loads(pin.read_text())
        path = Path(rec["path"])
        if _sha(path) != rec["sha256"]:
            raise LoopError(f"the frozen benchmark {path} changed since it was pinned ({rec['sha256'][:12]}); "
                            f"restore it, or remove {pin} to pin a new one (decisions before and after then "
                            "compare on different data)")
        return path, rec["sha256"]
    cur = store.get("curate", champion.manifest.get("inputs", {}).get("curate", ""))
    if cur is None:
        raise LoopError(f"the champion's curate artifact is not in the store: no test split to freeze as the "
                        "benchmark; set loop.benchmark to a COCO file")
    split = cur.path("coco_test")
    if not json.loads(split.read_text()).get("images"):
        split = cur.path("coco_val")
    sha = _sha(split)
    dst = root / "benchmark" / sha[:12] / "annotations.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(split, dst)
    from cvops.store.base import write_json_atomic

    write_json_atomic(pin, {"path": str(dst), "sha256": sha, "from_curate": cur.fingerprint,
                            "dataset_version": cur.metrics.get("dataset_version")})
    return dst, sha


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _image_hashes(coco: Path) -> Dict[str, str]:
    out = {}
    for im in json.loads(Path(coco).read_text()).get("images", []):
        try:
            out[hashlib.sha256(Path(im["file_name"]).read_bytes()).hexdigest()] = im["file_name"]
        except OSError:
            continue
    return out


def _overlap(bench: Path, store: Any, challenger: Any) -> List[str]:
    """Benchmark images (by content) that are in the challenger's training split."""
    cur = store.get("curate", challenger.manifest.get("inputs", {}).get("curate", ""))
    if cur is None:
        return []
    train = _image_hashes(cur.path("coco_train"))
    return sorted(p for h, p in _image_hashes(bench).items() if h in train)


def _new_data(folder: Path, store: Any, challenger: Any, reviewed: Optional[Dict[str, Any]]) -> Optional[Path]:
    """A COCO file of the reviewed images the challenger held out (its val and test splits), or None."""
    if reviewed is None:
        return None
    want = {im["file_name"] for im in json.loads(Path(reviewed["path"]).read_text())["images"]}
    cur = store.get("curate", challenger.manifest.get("inputs", {}).get("curate", ""))
    images, anns, cats = [], [], None
    for split in ("coco_val", "coco_test"):
        coco = json.loads(cur.path(split).read_text())
        cats = coco["categories"]
        keep = {im["id"] for im in coco["images"] if im["file_name"] in want}
        for im in coco["images"]:
            if im["id"] in keep:
                images.append({**im, "id": len(images) + 1, "_old": (split, im["id"])})
        remap = {im["_old"]: im["id"] for im in images}
        anns += [{**a, "id": len(anns) + k + 1, "image_id": remap[(split, a["image_id"])]}
                 for k, a in enumerate(x for x in coco["annotations"] if x["image_id"] in keep)]
    if not images:
        return None
    for im in images:
        im.pop("_old")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "new_data.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _score(export: Any, coco: Path) -> Dict[str, Any]:
    """The export's COCO box metrics on ``coco`` (ONNX Runtime; classes matched by name)."""
    import cv2

    from cvops.detector.coco import coco_eval, to_coco
    from cvops.detector.runtime import OnnxDetector

    data = json.loads(Path(coco).read_text())
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    det = OnnxDetector(export.path("onnx"))
    cat_ids = [by_name.get(c, -1) for c in det.classes]
    dets: List[Dict[str, Any]] = []
    for im in data["images"]:
        bgr = cv2.imread(im["file_name"], cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        dets += [d for d in to_coco(det.predict([bgr])[0], im["id"], cat_ids) if d["category_id"] != -1]
    stats, ev = coco_eval(coco, dets)
    stats["images"] = len(data["images"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    stats["pr50"] = {}  # precision at 101 recall points, IoU 0.5, per class (-1: recall never reached)
    for k, cat in enumerate(ev.params.catIds):
        curve = ev.eval["precision"][0, :, k, 0, -1] if ev.eval else None
        if curve is not None and (curve > -1).any():
            stats["pr50"][names[cat]] = [round(float(x), 4) for x in curve]
    return stats


def side_by_side(champion: Any, challenger: Any, coco: Path, repeats: int = 15) -> Dict[str, Any]:
    """Median ONNX Runtime latency (ms, batch 1) of both exports on one benchmark image, timed alternately in
    this process: a ratio that holds on a loaded machine, unlike figures from two export runs."""
    import statistics

    import cv2

    from cvops.detector.runtime import OnnxDetector

    images = json.loads(Path(coco).read_text()).get("images", [])
    bgr = next((b for b in (cv2.imread(im["file_name"], cv2.IMREAD_COLOR) for im in images[:5]) if b is not None),
               None)
    if bgr is None:
        return {}
    dets = {"champion": OnnxDetector(champion.path("onnx")), "challenger": OnnxDetector(challenger.path("onnx"))}
    times: Dict[str, List[float]] = {k: [] for k in dets}
    for d in dets.values():
        d.predict([bgr])  # warm
    for _ in range(repeats):
        for k, d in dets.items():
            t = time.perf_counter()
            d.predict([bgr])
            times[k].append(1000 * (time.perf_counter() - t))
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


# ------------------------------------------------------------------ the page
def _html(rec: Dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for where in ("benchmark", "new_data"):
        f = rec.get("figures", {}).get(where)
        if not f:
            continue
        classes = sorted(set(f["champion"]["per_class_AP"]) | set(f["challenger"]["per_class_AP"]))
        rows.append(f"<h2>{e(where.replace('_', ' '))} ({f['champion'].get('images')} images)</h2><table>"
                    "<tr><th></th><th>champion</th><th>challenger</th></tr>")
        for k in ("mAP", "mAP50", "mAP75"):
            rows.append(f"<tr><td>{k}</td><td>{f['champion'][k]:.3f}</td><td>{f['challenger'][k]:.3f}</td></tr>")
        for c in classes:
            a, b = f["champion"]["per_class_AP"].get(c), f["challenger"]["per_class_AP"].get(c)
            rows.append(f"<tr><td>AP {e(c)}</td><td>{'-' if a is None else f'{a:.3f}'}</td>"
                        f"<td>{'-' if b is None else f'{b:.3f}'}</td></tr>")
        rows.append("</table>")
        rows.append(_pr_svg(f))
    sh = rec.get("figures", {}).get("shadow")
    if sh:
        rows.append(f"<h2>shadow traffic ({sh['requests']} requests)</h2><table><tr><th>class</th><th>agree</th>"
                    "<th>only champion</th><th>only challenger</th><th>F1</th></tr>")
        for c, v in sh.get("per_class", {}).items():
            rows.append(f"<tr><td>{e(c)}</td><td>{v['tp']}</td><td>{v['fn']}</td><td>{v['fp']}</td>"
                        f"<td>{v['f1']:.3f}</td></tr>")
        rows.append(f"</table><p>median latency: champion {sh.get('live_ms')} ms, challenger {sh.get('shadow_ms')} "
                    "ms</p>")
    reasons = "".join(f"<li>{e(r)}</li>" for r in rec.get("reasons", []))
    return (f"<!doctype html><meta charset='utf-8'><title>cvops loop {e(rec.get('tick', ''))}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:right}</style>"
            f"<h1>{e(rec['decision'].upper())}: challenger {e(str(rec.get('challenger', '-')))} vs champion "
            f"{e(rec['champion'])}</h1><p>project {e(rec['project'])}, alias {e(rec['alias'])}, tick "
            f"{e(str(rec.get('tick')))}, triggers {e(', '.join(t['trigger'] for t in rec['triggers']))}</p>"
            f"<ul>{reasons}</ul>{''.join(rows)}<h2>reproduce</h2><pre>{e(chr(10).join(rec.get('reproduce', [])))}"
            "</pre>")


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _pr_svg(f: Dict[str, Any], w: int = 420, h: int = 300) -> str:
    """Precision-recall curves at IoU 0.5 per class, champion dashed and challenger solid, as inline SVG
    (the page stays one self-contained file)."""
    classes = sorted(set(f["champion"].get("pr50", {})) | set(f["challenger"].get("pr50", {})))
    if not classes:
        return ""
    m = 40
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w + 160}' height='{h + 2 * m}' role='img'>"
           f"<title>precision-recall at IoU 0.5</title><rect x='{m}' y='{m}' width='{w}' height='{h}' "
           "fill='none' stroke='#999'/>",
           f"<text x='{m + w / 2}' y='{h + 2 * m - 8}' text-anchor='middle'>recall</text>",
           f"<text x='12' y='{m + h / 2}' transform='rotate(-90 12 {m + h / 2})' text-anchor='middle'>precision</text>"]
    for k, cls in enumerate(classes[:len(COLOURS)]):
        colour = COLOURS[k]
        for who, dash in (("champion", "5,4"), ("challenger", "")):
            curve = f[who].get("pr50", {}).get(cls)
            if not curve:
                continue
            pts = " ".join(f"{m + w * i / 100:.1f},{m + h * (1 - p):.1f}" for i, p in enumerate(curve) if p >= 0)
            out.append(f"<polyline points='{pts}' fill='none' stroke='{colour}' stroke-width='1.6'"
                       f"{f' stroke-dasharray={chr(39)}{dash}{chr(39)}' if dash else ''}/>")
        out.append(f"<text x='{m + w + 10}' y='{m + 14 + 16 * k}' fill='{colour}'>{html.escape(cls)}</text>")
    out.append(f"<text x='{m + w + 10}' y='{m + h - 20}'>- - champion</text>"
               f"<text x='{m + w + 10}' y='{m + h - 4}'>—— challenger</text></svg>")
    return "".join(out)
