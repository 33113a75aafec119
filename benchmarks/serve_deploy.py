"""Deployment benchmarks: swaps under load, and a soak at steady load (issue #14).

    .venv/bin/python benchmarks/serve_deploy.py swap --model M [--seconds 60] [--every 10] [--clients 8]
    .venv/bin/python benchmarks/serve_deploy.py soak --model M [--minutes 10] [--clients 8] [--warmup 60]
    .venv/bin/python benchmarks/serve_deploy.py shadow --model M [--seconds 20] [--rounds 3] [--rate 0.1]
    .venv/bin/python benchmarks/serve_deploy.py sources --model M [--seconds 20] [--rounds 3] [--sources 32]

``M`` is an exported ``model.onnx`` (with the files beside it, e.g. ``<store>/export/<fp>/``). Both
build a scratch store holding two export artifacts of that model (``A`` and ``B``: the same weights,
different fingerprints), promote ``A`` to the alias ``production`` and start the real ``cvops serve
recipe=quickstart project=bench serve.alias=production`` in a subprocess on a free port (uvicorn, one
worker, request log in the scratch store). ``--clients`` threads post 320x240 JPEGs (one
``httpx.Client`` each) for the whole run.

swap   Every ``--every`` seconds the alias moves (promote B, then roll back to A, ...) through the
       registry, followed by ``POST /v1/admin/reload`` (the swap is complete when it answers).
       Reports failed requests (goal 0), answers from the wrong export after a swap completed
       (goal 0), and client latency p50/p99 in steady state vs during a swap (requests that overlap
       ``[reload sent, reload answered + 1 s]``).
soak   ``--minutes`` at steady load with ``serve.log_max_mb=8`` (so the request log rotates). Samples
       the server's RSS every 5 s; growth = median RSS of the last minute vs the first minute after
       ``--warmup`` s (goal < 5 %). Reports errors (goal 0), requests/s, p50/p99, and the rotated
       request log files at the end (goal > 0: rotation under way).

shadow Throughput with shadow traffic (``serve.shadow_alias=staging``, B promoted there, ``--rate``)
       vs without, the two servers started and loaded alternately ``--rounds`` times for ``--seconds``
       each; reports both medians and their ratio (goal >= 0.9), and the shadowed requests logged.
sources Throughput when every client request names one of ``--sources`` cameras (``X-Cvops-Source``,
       round robin: per-source series, drift windows and estimates) vs none, alternately ``--rounds``
       times for ``--seconds`` each; reports both medians and their ratio (goal >= 0.97, issue #29).

Each prints a small markdown table, then one JSON line with every number (the last line of stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
FP_A, FP_B = "a0a0a0a0a0a0a0a0", "b1b1b1b1b1b1b1b1"


def _store(model: Path, root: Path) -> Path:
    store = root / "store"
    for fp in (FP_A, FP_B):
        d = store / "export" / fp
        d.mkdir(parents=True)
        for f in model.parent.iterdir():
            if f.is_file() and f.suffix in (".onnx", ".json", ".txt"):
                shutil.copy2(f, d / f.name)
        (d / "manifest.json").write_text(json.dumps({
            "stage": "export", "fingerprint": fp, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": {"project": "bench"}, "inputs": {}, "artifacts": {"onnx": model.name},
            "metrics": {"gate": "pass"}}))
    return store


def _images(n: int = 16) -> List[bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = np.full((240, 320, 3), rng.integers(40, 200), np.uint8)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, 260, 2))
            cv2.rectangle(img, (x, y % 200), (x + 40, y % 200 + 30), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        out.append(cv2.imencode(".jpg", img)[1].tobytes())
    return out


class Server:
    def __init__(self, store: Path, port: int, work: Path, extra: List[str]) -> None:
        env = {**os.environ, "WANDB_MODE": "offline"}
        env.pop("CVOPS_TOKEN", None)
        self.out = work / "server.log"
        self.url = f"http://127.0.0.1:{port}"
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cvops", "serve", "recipe=quickstart", "project=bench", f"paths.store={store}",
                 "serve.alias=production", f"serve.port={port}", "serve.alias_poll_s=60", *extra],
                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.out.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not get ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Load:
    """``clients`` threads posting images until :meth:`stop`; every answer recorded."""

    def __init__(self, url: str, bodies: List[bytes], clients: int, sources: int = 0) -> None:
        self.url, self.bodies, self.sources = url, bodies, sources
        self.answers: List[Tuple[float, float, Any, Optional[str]]] = []  # sent, received, status, model
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]

    def _client(self, k: int) -> None:
        import httpx

        i = k
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    named = {"X-Cvops-Source": f"cam-{i % self.sources}"} if self.sources else {}
                    r = c.post(f"{self.url}/v1/predict", content=self.bodies[i % len(self.bodies)],
                               headers={"Content-Type": "image/jpeg", **named})
                    model = r.json().get("model") if r.status_code == 200 else None
                    self.answers.append((sent, time.monotonic(), r.status_code, model))
                except (httpx.HTTPError, ValueError) as e:
                    self.answers.append((sent, time.monotonic(), type(e).__name__, None))
                i += 1

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=120)


def _pct(xs: List[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def cmd_swap(args: argparse.Namespace) -> Dict[str, Any]:
    import httpx

    work, reg, server = _start(args, "swap", ["serve.sample_rate=0"])
    swaps: List[Tuple[float, float, str]] = []
    try:
        server.wait_ready()
        load = Load(server.url, _images(), args.clients).start()
        t_end = time.monotonic() + args.seconds
        target = FP_B
        while time.monotonic() + args.every < t_end:
            time.sleep(args.every)
            if target == FP_B:
                reg.promote("production", reg.store.get("export", FP_B))
            else:
                reg.rollback("production")
            t0 = time.monotonic()
            r = httpx.post(f"{server.url}/v1/admin/reload", timeout=120)
            swaps.append((t0, time.monotonic(), target))
            assert r.status_code == 200 and r.json()["export"] == target, r.text
            target = FP_A if target == FP_B else FP_B
        time.sleep(max(0.0, t_end - time.monotonic()))
        load.stop()
    finally:
        server.stop()
    answers = load.answers
    failed = [a for a in answers if a[2] != 200]
    wrong = 0
    for k, (t0, t1, fp) in enumerate(swaps):
        until = swaps[k + 1][0] if k + 1 < len(swaps) else float("inf")
        wrong += sum(1 for a in answers if t1 < a[0] and a[1] < until and a[3] != fp)
    during = [(a[1] - a[0]) * 1000 for a in answers if any(a[0] < t1 + 1 and a[1] > t0 for t0, t1, _ in swaps)]
    steady = [(a[1] - a[0]) * 1000 for a in answers if not any(a[0] < t1 + 1 and a[1] > t0 for t0, t1, _ in swaps)]
    res = {"requests": len(answers), "failed": len(failed), "wrong_export_after_swap": wrong, "swaps": len(swaps),
           "swap_s_median": round(statistics.median([t1 - t0 for t0, t1, _ in swaps]), 3) if swaps else None,
           "steady_p50_ms": round(_pct(steady, 50), 1), "steady_p99_ms": round(_pct(steady, 99), 1),
           "swap_p50_ms": round(_pct(during, 50), 1), "swap_p99_ms": round(_pct(during, 99), 1),
           "clients": args.clients, "seconds": args.seconds}
    _table({"requests": res["requests"], "failed": res["failed"], "wrong export": wrong, "swaps": len(swaps),
            "swap s": res["swap_s_median"], "steady p50/p99 ms": f"{res['steady_p50_ms']} / {res['steady_p99_ms']}",
            "during swap p50/p99 ms": f"{res['swap_p50_ms']} / {res['swap_p99_ms']}"})
    shutil.rmtree(work, ignore_errors=True)
    return res


def cmd_soak(args: argparse.Namespace) -> Dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="cvops-bench-soak-log-"))
    work, _, server = _start(args, "soak", [f"serve.log_dir={log_dir}", "serve.log_max_mb=8",
                                           "serve.sample_rate=0.05"])
    rss: List[Tuple[float, float]] = []
    try:
        server.wait_ready()
        t_start = time.monotonic()
        load = Load(server.url, _images(), args.clients).start()
        t_end = t_start + args.minutes * 60
        while time.monotonic() < t_end:
            time.sleep(5)
            rss.append((time.monotonic() - t_start, server.rss_mb()))
            print(f"  {rss[-1][0]:6.0f} s  RSS {rss[-1][1]:7.1f} MB  {len(load.answers)} answers", flush=True)
        load.stop()
    finally:
        server.stop()
    answers = load.answers
    first = [m for t, m in rss if args.warmup <= t < args.warmup + 60]
    last = [m for t, m in rss if t >= rss[-1][0] - 60] if rss else []
    growth = (statistics.median(last) - statistics.median(first)) / statistics.median(first) if first and last else None
    lat = [(a[1] - a[0]) * 1000 for a in answers if a[2] == 200]
    rotated = len(list(log_dir.glob("requests.*.jsonl")))
    res = {"requests": len(answers), "failed": sum(1 for a in answers if a[2] != 200),
           "req_per_s": round(len(answers) / (args.minutes * 60), 1), "p50_ms": round(_pct(lat, 50), 1),
           "p99_ms": round(_pct(lat, 99), 1), "rss_first_mb": round(statistics.median(first), 1) if first else None,
           "rss_last_mb": round(statistics.median(last), 1) if last else None,
           "rss_growth": round(growth, 4) if growth is not None else None, "rotated_log_files": rotated,
           "minutes": args.minutes, "clients": args.clients}
    _table({"requests": res["requests"], "failed": res["failed"], "req/s": res["req_per_s"],
            "p50/p99 ms": f"{res['p50_ms']} / {res['p99_ms']}",
            "RSS after warm-up -> end MB": f"{res['rss_first_mb']} -> {res['rss_last_mb']}",
            "growth": res["rss_growth"], "rotated logs": rotated})
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    return res


def cmd_shadow(args: argparse.Namespace) -> Dict[str, Any]:
    rates: Dict[str, List[float]] = {"plain": [], "shadow": []}
    failed = 0
    shadowed = 0
    for r in range(args.rounds):
        for kind in ("plain", "shadow"):
            log_dir = Path(tempfile.mkdtemp(prefix="cvops-bench-shadow-log-"))
            extra = [f"serve.log_dir={log_dir}"]
            if kind == "shadow":
                extra += ["serve.shadow_alias=staging", f"serve.shadow_rate={args.rate}"]
            work, reg, server = _start(args, "shadow", extra)
            reg.promote("staging", reg.store.get("export", FP_B))
            try:
                server.wait_ready()
                load = Load(server.url, _images(), args.clients).start()
                time.sleep(args.seconds)
                load.stop()
            finally:
                server.stop()
            answers = load.answers
            failed += sum(1 for a in answers if a[2] != 200)
            rates[kind].append(len(answers) / args.seconds)
            if kind == "shadow" and (log_dir / "shadow.jsonl").exists():
                shadowed += len((log_dir / "shadow.jsonl").read_text().splitlines())
            print(f"  round {r + 1} {kind:6s} {rates[kind][-1]:7.1f} req/s", flush=True)
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(log_dir, ignore_errors=True)
    plain, shadow = statistics.median(rates["plain"]), statistics.median(rates["shadow"])
    res = {"plain_req_per_s": round(plain, 1), "shadow_req_per_s": round(shadow, 1),
           "ratio": round(shadow / plain, 3), "rate": args.rate, "shadowed_logged": shadowed, "failed": failed,
           "rounds": args.rounds, "seconds": args.seconds, "clients": args.clients}
    _table({"req/s without": res["plain_req_per_s"], f"req/s shadow {args.rate}": res["shadow_req_per_s"],
            "ratio": res["ratio"], "shadowed": shadowed, "failed": failed})
    return res


def cmd_sources(args: argparse.Namespace) -> Dict[str, Any]:
    rates: Dict[str, List[float]] = {"none": [], "named": []}
    failed = 0
    for r in range(args.rounds):
        for kind in ("none", "named"):
            work, reg, server = _start(args, "sources", [f"serve.max_sources={max(1, args.sources)}"])
            try:
                server.wait_ready()
                load = Load(server.url, _images(), args.clients, args.sources if kind == "named" else 0).start()
                time.sleep(args.seconds)
                load.stop()
                metrics = httpx_get(f"{server.url}/metrics")
            finally:
                server.stop()
            failed += sum(1 for a in load.answers if a[2] != 200)
            rates[kind].append(len(load.answers) / args.seconds)
            named = len({line.split('source="')[1].split('"')[0] for line in metrics.splitlines()
                         if line.startswith("cvops_requests_total{") and 'source="' in line})
            print(f"  round {r + 1} {kind:5s} {rates[kind][-1]:7.1f} req/s ({named} source series)", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    none, named = statistics.median(rates["none"]), statistics.median(rates["named"])
    res = {"unnamed_req_per_s": round(none, 1), "named_req_per_s": round(named, 1), "ratio": round(named / none, 3),
           "sources": args.sources, "failed": failed, "rounds": args.rounds, "seconds": args.seconds,
           "clients": args.clients}
    _table({"req/s no source": res["unnamed_req_per_s"], f"req/s {args.sources} sources": res["named_req_per_s"],
            "ratio": res["ratio"], "failed": failed})
    return res


def httpx_get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=30).text


def _start(args: argparse.Namespace, name: str, extra: List[str]) -> Tuple[Path, Any, Server]:
    """A scratch store with exports A and B, A promoted to ``production``, and the server started on it."""
    from cvops.store import FolderStore
    from cvops.store.registry import Registry

    work = Path(tempfile.mkdtemp(prefix=f"cvops-bench-{name}-"))
    store = _store(Path(args.model).resolve(), work)
    reg = Registry(FolderStore(store), "bench")
    reg.promote("production", reg.store.get("export", FP_A))
    return work, reg, Server(store, args.port or _free_port(), work, extra)


def _table(row: Dict[str, Any]) -> None:
    print("| " + " | ".join(row) + " |")
    print("|" + "---:|" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("swap", "soak", "shadow", "sources"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, type=Path)
        p.add_argument("--clients", type=int, default=8)
        p.add_argument("--port", type=int, default=0)
    sub.choices["swap"].add_argument("--seconds", type=float, default=60)
    sub.choices["swap"].add_argument("--every", type=float, default=10)
    sub.choices["soak"].add_argument("--minutes", type=float, default=10)
    sub.choices["soak"].add_argument("--warmup", type=float, default=60)
    sub.choices["shadow"].add_argument("--seconds", type=float, default=20)
    sub.choices["shadow"].add_argument("--rounds", type=int, default=3)
    sub.choices["shadow"].add_argument("--rate", type=float, default=0.1)
    sub.choices["sources"].add_argument("--seconds", type=float, default=20)
    sub.choices["sources"].add_argument("--rounds", type=int, default=3)
    sub.choices["sources"].add_argument("--sources", type=int, default=32)
    args = ap.parse_args()
    res = {"swap": cmd_swap, "soak": cmd_soak, "shadow": cmd_shadow, "sources": cmd_sources}[args.cmd](args)
    print(json.dumps(res))
    ok = res["failed"] == 0 and res.get("wrong_export_after_swap", 0) == 0
    if args.cmd == "shadow":
        ok = ok and res["ratio"] >= 0.9 and res["shadowed_logged"] > 0
    if args.cmd == "sources":
        ok = ok and res["ratio"] >= 0.97
    if args.cmd == "soak":
        ok = ok and res["rss_growth"] is not None and res["rss_growth"] < 0.05 and res["rotated_log_files"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
