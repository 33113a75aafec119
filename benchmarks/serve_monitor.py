"""Serve and monitor benchmarks: load test, drift power / false alarms, monitor cost on a big request log.

    .venv/bin/python benchmarks/serve_monitor.py load --model M [--n 1000] [--concurrency 8] [--reference-dir R]
    .venv/bin/python benchmarks/serve_monitor.py drift --model M --reference-dir R [--windows 20] [--size 100]
    .venv/bin/python benchmarks/serve_monitor.py monitor-log --model M --reference-dir R [--n 10000]

for example, on the quickstart export::

    .venv/bin/python benchmarks/serve_monitor.py load --model /tmp/devexp/model.onnx --n 1000 --concurrency 8
    .venv/bin/python benchmarks/serve_monitor.py drift --model /tmp/devexp/model.onnx \\
        --reference-dir /tmp/qs2/store/reference/devexport-3c08f0c4
    .venv/bin/python benchmarks/serve_monitor.py monitor-log --model /tmp/devexp/model.onnx \\
        --reference-dir /tmp/qs2/store/reference/devexport-3c08f0c4 --n 10000

``M`` is an exported ``model.onnx``; ``R`` its reference profile directory (``profile.npz``, as the
monitor stage caches it under ``<store>/reference/<export fingerprint>-<code>/``). Generated images
come from the ``data.synthetic`` spec of ``--recipe`` (default ``quickstart``); monitor settings
(thresholds, permutations, edge-case parameters) from its ``monitor`` section. Every subcommand
prints a small markdown table, then one JSON line with all numbers (the last line of stdout).

load         The real server (``cvops.serve.server.serve``: uvicorn, ``--workers`` workers of ``--lanes``
             inference lanes (serve.lanes), in a subprocess, on a
             free port, request log in a temporary directory, sample_rate 0.1; with ``--reference-dir``
             also the live drift gauges ``cvops serve`` runs) takes ``--n`` POST /v1/predict requests
             (raw 320x320 JPEGs from the synthetic generator) from ``--concurrency`` client threads,
             each with its own ``httpx.Client``. Reports errors (goal 0), client p50/p99 latency,
             requests/s and CPU seconds per request of server and client. Then, in this one process,
             the bare baseline: ``OnnxDetector.predict`` on the same images (decoded as the server
             decodes them) from the same number of threads for the same count (half before the
             server run, half after, to average out background load), images/s, and the ratio
             server / bare (goal >= 0.9). The bare side creates its ONNX Runtime session with
             ``threads=None`` (ORT's defaults: an intra-op pool of one thread per physical core,
             sequential execution); the server splits the usable cores between its workers and
             lanes (``cvops.serve.server.plan_cores``).
drift        ``--windows`` windows of ``--size`` freshly generated images (seeds ``--seed0 + i``, never
             the training seed) per condition: no shift, a mild shift (``--mild``, default brightness
             0.8) and the recipe's ``monitor.shift`` (quickstart: brightness 0.55 + blur 1.5). The
             same scene seeds are used under every condition (paired). Each window goes through
             the exported model (``run_images`` + ``profile_of``) and ``compare`` against the
             reference with the monitor defaults. Reports the alarm rate per condition with a 95 %
             Clopper-Pearson interval (goals: <= 5 % unshifted, >= 95 % shifted) and which features fired.
monitor-log  Writes a ``--n`` record request log with :class:`cvops.requestlog.RequestLog`:
             real records (the server's exact record layout, embeddings included) of ``--base``
             generated images run through the model, replicated with small jitter, 10 % of them with
             their image. Then times what ``cvops recipe=X stages=[monitor]`` does on it:
             ``window_from_log(window=--window)`` (which itself calls ``read_log``, also timed
             alone), ``profile_of``, ``compare``, ``edge_reasons``; median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TQDM_DISABLE", "1")  # run_images' progress bars

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(title: str, table: str, payload: Dict[str, Any]) -> None:
    """Print the title, the table and the JSON line."""
    print(f"\n### {title}\n")
    print(table)
    print()
    print(json.dumps(payload, default=_json_default, separators=(",", ":")), flush=True)


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


def load_avg() -> float:
    """The 1-minute load average (0 where unknown)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return 0.0


def machine() -> Dict[str, Any]:
    """CPU facts that explain the numbers."""
    cores: set = set()
    phys, core = "0", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
            elif not line.strip() and core is not None:
                cores.add((phys, core))
                core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    import onnxruntime as ort

    return {"logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "physical_cores": len(cores) or None, "onnxruntime": ort.__version__, "load_1min_start": load_avg()}


def recipe_config(recipe: str) -> Any:
    from cvops.config import compose_config

    return compose_config([f"recipe={recipe}"])


def parse_shift(text: str) -> Any:
    """``"brightness=0.55,blur=1.5"`` -> :class:`Shift` (empty or ``none``: identity)."""
    from cvops.synthetic import Shift

    kw: Dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "none":
            continue
        k, v = part.split("=", 1)
        if k not in Shift.__dataclass_fields__:
            raise SystemExit(f"unknown shift key {k!r}; choose from {list(Shift.__dataclass_fields__)}")
        kw[k] = v if k == "background" else float(v)
    return Shift(**kw)


def shift_text(shift: Any) -> str:
    parts = [f"{k}={v}" for k, v in vars(shift).items() if v not in (None, 0.0, 1.0)]
    return ",".join(parts) or "none"


def generate_images(cfg: Any, out: Path, seed: int, n: int, shift: Any = None,
                    size: Optional[Tuple[int, int]] = None) -> List[Path]:
    """``n`` images of the recipe's synthetic generator (no videos) under ``shift``; their paths."""
    from cvops.synthetic import generate, spec_from_config

    spec = spec_from_config(cfg.data.synthetic, shift)
    spec.seed, spec.num_images, spec.videos = int(seed), int(n), 0
    if size is not None:
        spec.image_size = tuple(size)  # type: ignore[assignment]
    generate(out, spec, progress=False)
    return sorted((out / "images").glob("*.jpg"))


def reference_profile(reference_dir: Path) -> Any:
    from cvops.drift.stats import Profile

    path = reference_dir / "profile.npz" if reference_dir.is_dir() else reference_dir
    if not path.is_file():
        raise SystemExit(f"no reference profile at {path} (expected <store>/reference/<export>-<code>/profile.npz)")
    return Profile.from_npz(path)


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> Tuple[float, float]:
    """Exact binomial confidence interval of ``k`` successes in ``n``."""
    from scipy import stats

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------

SERVER_CODE = """
import json, sys
c = json.loads(sys.argv[1])
drift = None
if c["reference"]:
    from cvops.drift.stats import Profile
    from cvops.drift.gauges import DriftGauges
    m = c["monitor"]
    drift = DriftGauges(Profile.from_npz(c["reference"]), m["p_value"], m["psi_threshold"], m["permutations"], m["low"])
from cvops.serve.server import serve
from cvops.schema import ServeConfig
cfg = ServeConfig(host="127.0.0.1", port=c["port"], sample_rate=c["sample_rate"], token_env=c["token_env"],
                  lanes=c.get("lanes", 0))
serve(c["model"], cfg, log_dir=c["log_dir"], drift=drift, drift_window=c["monitor"]["drift_window"],
      drift_every=c["monitor"]["drift_every"], workers=c.get("workers", 1))
"""
NO_TOKEN_ENV = "CVOPS_BENCH_SERVE_NO_TOKEN"


class ServerProcess:
    """``cvops.serve.server.serve`` in a child process; its output goes to a file."""

    def __init__(self, config: Dict[str, Any], out_file: Path) -> None:
        self.config = config
        self.out_file = out_file
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != NO_TOKEN_ENV}
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.out_file, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE, json.dumps(self.config)],
                                         stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and its worker processes so far."""
        if self.proc is None:
            return 0.0
        import psutil

        total = 0.0
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def wait_ready(self, url: str, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise SystemExit(f"the server exited:\n{self.out_file.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server at {url} is not ready after {timeout:.0f} s")

    def stop(self) -> int:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 20 s; the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fire(url: str, bodies: Sequence[bytes], n: int, concurrency: int, offset: int = 0) -> Dict[str, Any]:
    """``n`` raw-JPEG POST /v1/predict requests from ``concurrency`` threads (one ``httpx.Client`` each).

    Request ``i`` sends ``bodies[(offset + i) % len(bodies)]``.
    """
    import httpx

    lock = threading.Lock()
    counter = [0]
    client_ms: List[float] = []
    server_ms: List[float] = []
    errors: List[str] = []
    statuses: Counter = Counter()

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = counter[0]
                    if i >= n:
                        return
                    counter[0] += 1
                body = bodies[(offset + i) % len(bodies)]
                t = time.perf_counter()
                try:
                    r = client.post(f"{url}/v1/predict", content=body, headers={"Content-Type": "image/jpeg"})
                    ms = (time.perf_counter() - t) * 1000
                    data = r.json() if r.status_code == 200 else None
                    with lock:
                        statuses[r.status_code] += 1
                        if data is not None and isinstance(data.get("detections"), list):
                            client_ms.append(ms)
                            server_ms.append(float(data["latency_ms"]))
                        else:
                            errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except (httpx.HTTPError, ValueError) as e:
                    with lock:
                        statuses["transport"] += 1
                        errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(concurrency)]
    cpu0 = time.process_time()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"client_ms": client_ms, "server_ms": server_ms, "errors": errors, "statuses": dict(statuses),
            "wall_s": wall, "client_cpu_s": time.process_time() - cpu0}


def bare(detector: Any, images: Sequence[np.ndarray], n: int, concurrency: int) -> Dict[str, float]:
    """``OnnxDetector.predict`` on ``n`` images (cycling ``images``) from ``concurrency`` threads."""
    counter = [0]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = counter[0]
                if i >= n:
                    return
                counter[0] += 1
            detector.predict([images[i % len(images)]])

    cpu0 = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(work) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    return {"n": n, "wall_s": wall, "images_per_s": n / wall, "cpu_s": time.process_time() - cpu0}


def single_costs(detector: Any, bodies: Sequence[bytes], repeats: int) -> Dict[str, float]:
    """Median single-thread milliseconds of the server's per-request steps: decode, image_stats, predict."""
    from cvops.drift.stats import image_stats
    from cvops.serve.decode import decode_image

    out: Dict[str, List[float]] = {"decode_ms": [], "image_stats_ms": [], "predict_ms": []}
    for k in range(repeats):
        body = bodies[k % len(bodies)]
        t0 = time.perf_counter()
        bgr, _ = decode_image(body, 40_000_000)
        t1 = time.perf_counter()
        image_stats(bgr)
        t2 = time.perf_counter()
        detector.predict([bgr])
        t3 = time.perf_counter()
        out["decode_ms"].append((t1 - t0) * 1000)
        out["image_stats_ms"].append((t2 - t1) * 1000)
        out["predict_ms"].append((t3 - t2) * 1000)
    return {k: round(statistics.median(v), 2) for k, v in out.items()}


def cmd_load(args: argparse.Namespace) -> int:
    import httpx

    from cvops.detector.runtime import OnnxDetector
    from cvops.serve.decode import decode_image
    from cvops.requestlog import read_log

    model = Path(args.model).resolve()
    cfg = recipe_config(args.recipe)
    mon = cfg.monitor
    facts = machine()
    work = Path(tempfile.mkdtemp(prefix="cvops-bench-load-", dir=args.tmp))
    try:
        paths = generate_images(cfg, work / "gen", args.seed, args.images, size=(args.size, args.size))
        bodies = [p.read_bytes() for p in paths]
        decoded = [decode_image(b, 40_000_000)[0] for b in bodies]  # exactly what the server feeds predict
        detector = OnnxDetector(model)  # threads=None: the server's setting
        opts = detector.session.get_session_options()
        threads_info = {"intra_op_num_threads": opts.intra_op_num_threads, "inter_op_num_threads":
                        opts.inter_op_num_threads, "execution_mode": str(opts.execution_mode)}
        for im in decoded:  # warm-up
            detector.predict([im])
        half = args.n // 2
        bare_before = bare(detector, decoded, half, args.concurrency)

        log_dir = work / "requests"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = {"model": str(model), "port": port, "log_dir": str(log_dir), "sample_rate": args.sample_rate,
                  "workers": args.workers, "lanes": args.lanes,
                  "token_env": NO_TOKEN_ENV, "reference": str(Path(args.reference_dir) / "profile.npz")
                  if args.reference_dir else None,
                  "monitor": {"p_value": float(mon.p_value), "psi_threshold": float(mon.psi_threshold),
                              "permutations": int(mon.mmd_permutations), "low": float(mon.low_confidence),
                              "drift_window": int(mon.drift_window), "drift_every": int(mon.drift_every)}}
        server = ServerProcess(config, work / "server.log")
        server.start()
        try:
            server.wait_ready(url)
            warm = fire(url, bodies, max(2 * args.concurrency, 16), args.concurrency)
            cpu0 = server.cpu_seconds()
            run = fire(url, bodies, args.n, args.concurrency, offset=7)
            server_cpu = server.cpu_seconds() - cpu0
            metrics_text = httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            rc = server.stop()
        bare_after = bare(detector, decoded, args.n - half, args.concurrency)
        costs = single_costs(detector, bodies, args.cost_repeats)
        records, skipped = read_log(log_dir)
        sampled = sum(1 for r in records if r.get("image_path"))
        ok_records = sum(1 for r in records if r.get("status") == 200)
        expected = args.n + len(warm["client_ms"])
        checks = [int(float(line.split()[-1])) for line in metrics_text.splitlines()
                  if line.startswith("cvops_drift_checks_total ")]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    errors = len(run["errors"]) + len(warm["errors"])
    rps = len(run["client_ms"]) / run["wall_s"]
    bare_n = bare_before["n"] + bare_after["n"]
    bare_wall = bare_before["wall_s"] + bare_after["wall_s"]
    bare_ips = bare_n / bare_wall
    ratio = rps / bare_ips
    rows = [
        ["server errors (goal 0)", errors, "ok" if errors == 0 else "FAIL"],
        ["client latency p50 / p99 (ms)", f"{pct(run['client_ms'], 50):.1f} / {pct(run['client_ms'], 99):.1f}", ""],
        ["server latency_ms p50 / p99 (decode+infer)",
         f"{pct(run['server_ms'], 50):.1f} / {pct(run['server_ms'], 99):.1f}", ""],
        ["server throughput (req/s)", round(rps, 1), ""],
        ["bare OnnxDetector.predict (images/s), before / after",
         f"{bare_ips:.1f} ({bare_before['images_per_s']:.1f} / {bare_after['images_per_s']:.1f})", ""],
        ["server / bare (goal >= 0.9)", round(ratio, 3), "ok" if ratio >= 0.9 else "below goal"],
        ["CPU ms per request: server / client; bare per image",
         f"{1000 * server_cpu / args.n:.1f} / {1000 * run['client_cpu_s'] / args.n:.1f}; "
         f"{1000 * (bare_before['cpu_s'] + bare_after['cpu_s']) / bare_n:.1f}", ""],
        ["single-thread ms: decode / image_stats / predict",
         f"{costs['decode_ms']} / {costs['image_stats_ms']} / {costs['predict_ms']}", ""],
        ["request log: records (200) / expected, images kept",
         f"{ok_records} / {expected}, {sampled} ({sampled / max(len(records), 1):.1%})",
         "ok" if ok_records == expected else "MISMATCH"],
        ["ORT threads (bare: threads=None; server: cores // workers // lanes per session, serve.lanes)",
         f"bare intra_op={threads_info['intra_op_num_threads']} (0 = ORT default: one per physical core = "
         f"{facts['physical_cores']}), {threads_info['execution_mode']}; server workers {args.workers}, "
         f"lanes {args.lanes or 'auto (one per core of a worker)'}", ""],
    ]
    payload = {
        "benchmark": "serve_load", "model": str(model), "n": args.n, "concurrency": args.concurrency,
        "workers": args.workers, "lanes": args.lanes,
        "image_size": [args.size, args.size], "distinct_images": len(bodies),
        "jpeg_bytes_mean": round(statistics.mean(len(b) for b in bodies)), "sample_rate": args.sample_rate,
        "live_drift_gauges": bool(args.reference_dir), "drift_checks_run": checks[0] if checks else 0,
        "errors": errors, "error_examples": (run["errors"] + warm["errors"])[:5], "statuses": run["statuses"],
        "client_p50_ms": pct(run["client_ms"], 50), "client_p99_ms": pct(run["client_ms"], 99),
        "server_p50_ms": pct(run["server_ms"], 50), "server_p99_ms": pct(run["server_ms"], 99),
        "server_rps": rps, "server_wall_s": run["wall_s"], "server_cpu_s": server_cpu,
        "client_cpu_s": run["client_cpu_s"], "bare_images_per_s": bare_ips, "bare_before": bare_before,
        "bare_after": bare_after, "ratio_server_over_bare": ratio, "single_thread_costs": costs,
        "log_records_ok": ok_records, "log_records_expected": expected, "log_skipped_lines": skipped,
        "log_images_sampled": sampled, "ort_session": threads_info, "server_exit_code": rc,
        "machine": facts, "load_1min_end": load_avg(),
    }
    emit(f"serve load: {args.n} requests, {args.concurrency} clients, {len(bodies)} JPEGs "
         f"{args.size}x{args.size} (load avg at start {facts['load_1min_start']:.2f})",
         md_table(["metric", "value", "verdict"], rows), payload)
    return 0 if errors == 0 and ok_records == expected else 1


# ---------------------------------------------------------------------------
# drift
# ---------------------------------------------------------------------------


def cmd_drift(args: argparse.Namespace) -> int:
    from cvops.detector.runtime import OnnxDetector
    from cvops.drift.stats import compare
    from cvops.drift.profile import iter_folder, profile_of, run_images

    cfg = recipe_config(args.recipe)
    mon = cfg.monitor
    low = float(mon.low_confidence)
    ref = reference_profile(Path(args.reference_dir))
    detector = OnnxDetector(Path(args.model))
    strong = parse_shift(args.shift) if args.shift else parse_shift(
        ",".join(f"{k}={v}" for k, v in dict(mon.shift).items() if v is not None))
    conditions = [("unshifted", parse_shift("none"), "<= 5%"), ("mild", parse_shift(args.mild), "(report)"),
                  ("shifted", strong, ">= 95%")]
    if int(cfg.data.synthetic.seed) in range(args.seed0, args.seed0 + args.windows):
        raise SystemExit(f"--seed0 {args.seed0}: the windows would reuse the training seed {cfg.data.synthetic.seed}")
    facts = machine()
    work = Path(tempfile.mkdtemp(prefix="cvops-bench-drift-", dir=args.tmp))
    results: Dict[str, List[Dict[str, Any]]] = {name: [] for name, _, _ in conditions}
    t_all = time.perf_counter()
    try:
        for i in range(args.windows):
            seed = args.seed0 + i
            for name, shift, _ in conditions:
                t0 = time.perf_counter()
                out = work / f"{name}-{seed}"
                generate_images(cfg, out, seed, args.size, shift)
                t1 = time.perf_counter()
                seen = run_images(detector, iter_folder(out / "images", args.size), low)
                t2 = time.perf_counter()
                rep = compare(ref, profile_of(seen), p_value=float(mon.p_value),
                              psi_threshold=float(mon.psi_threshold), permutations=int(mon.mmd_permutations),
                              seed=int(mon.seed))
                t3 = time.perf_counter()
                shutil.rmtree(out, ignore_errors=True)
                tested = [f for f in rep.features if f.test != "skipped"]
                results[name].append({
                    "seed": seed, "images": len(seen), "drift": rep.drift_detected, "features": rep.drift_features,
                    "min_p_adjusted": {f.name: f.p_adjusted for f in tested},
                    "gen_s": t1 - t0, "infer_s": t2 - t1, "compare_s": t3 - t2})
            if args.verbose:
                print(f"window {i + 1}/{args.windows}: " + ", ".join(
                    f"{n}={'DRIFT ' + '+'.join(results[n][-1]['features']) if results[n][-1]['drift'] else 'ok'}"
                    for n, _, _ in conditions), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - t_all

    rows = []
    summary: Dict[str, Any] = {}
    for name, shift, goal in conditions:
        res = results[name]
        k, n = sum(r["drift"] for r in res), len(res)
        lo, hi = clopper_pearson(k, n)
        fired = Counter(f for r in res for f in r["features"])
        rate = k / n if n else float("nan")
        verdict = ""
        if name == "unshifted":
            verdict = "ok" if rate <= 0.05 else "above goal"
        elif name == "shifted":
            verdict = "ok" if rate >= 0.95 else "below goal"
        rows.append([name, shift_text(shift), f"{k}/{n}", f"{rate:.0%}", f"{lo:.0%}-{hi:.0%}", goal, verdict,
                     ", ".join(f"{f} {c}" for f, c in fired.most_common()) or "-"])
        summary[name] = {"shift": vars(shift), "alarms": k, "windows": n, "rate": rate, "ci95": [lo, hi],
                         "features_fired": dict(fired),
                         "seconds_per_window": {s: statistics.mean(r[s] for r in res) for s in
                                                ("gen_s", "infer_s", "compare_s")},
                         "windows_detail": [{k2: r[k2] for k2 in ("seed", "drift", "features")} for r in res],
                         "p_adjusted_median": {f: statistics.median(r["min_p_adjusted"].get(f, 1.0) for r in res)
                                               for f in (res[0]["min_p_adjusted"] if res else {})}}
    payload = {"benchmark": "monitor_drift", "model": str(args.model), "reference": str(args.reference_dir),
               "reference_images": ref.n, "windows": args.windows, "window_size": args.size,
               "seeds": [args.seed0, args.seed0 + args.windows - 1], "training_seed": int(cfg.data.synthetic.seed),
               "p_value": float(mon.p_value), "psi_threshold": float(mon.psi_threshold),
               "permutations": int(mon.mmd_permutations), "low_confidence": low, "total_s": total_s,
               "conditions": summary, "machine": facts, "load_1min_end": load_avg()}
    emit(f"drift: {args.windows} windows x {args.size} images per condition vs reference of {ref.n} images "
         f"({total_s:.0f} s, load avg at start {facts['load_1min_start']:.2f})",
         md_table(["window", "shift", "alarms", "rate", "95% CI", "goal", "verdict", "features fired (windows)"], rows),
         payload)
    return 0


# ---------------------------------------------------------------------------
# monitor-log
# ---------------------------------------------------------------------------


def server_record(detector: Any, body: bytes, fingerprint: str, latency_ms: float) -> Dict[str, Any]:
    """The record the server logs for a successful raw-JPEG request (see ``cvops.serve.predict``)."""
    from cvops.drift.stats import image_stats
    from cvops.serve.decode import decode_image

    bgr, mime = decode_image(body, 40_000_000)
    dets = detector.predict([bgr])[0]
    h, w = bgr.shape[:2]
    rec: Dict[str, Any] = {"status": 200, "latency_ms": round(latency_ms, 3), "content_type": mime, "upload": "raw",
                           **image_stats(bgr), "width": w, "height": h, "model": fingerprint,
                           "detections": dets.to_json(detector.classes)}
    if dets.embedding is not None:
        rec["embedding"] = [round(float(v), 5) for v in dets.embedding]
    return rec


def jitter(rec: Dict[str, Any], rng: np.random.Generator, rel: float) -> Dict[str, Any]:
    """A copy of a server record with small relative noise on every measured value."""
    out = dict(rec)
    for k in ("brightness", "contrast", "sharpness", "saturation"):
        out[k] = float(rec[k]) * (1 + rel * rng.standard_normal())
    out["latency_ms"] = round(float(rec["latency_ms"]) * (1 + 10 * rel * abs(rng.standard_normal())), 3)
    w, h = float(rec["width"]), float(rec["height"])
    dets = []
    for d in rec["detections"]:
        box = np.asarray(d["box"], float) + rng.normal(0, 1.0, 4)
        box[0::2] = box[0::2].clip(0, w)
        box[1::2] = box[1::2].clip(0, h)
        score = float(np.clip(d["score"] * (1 + rel * rng.standard_normal()), 0, 1))
        dets.append({**d, "box": [round(float(v), 2) for v in box], "score": round(score, 4)})
    out["detections"] = dets
    if rec.get("embedding") is not None:
        e = np.asarray(rec["embedding"], float)
        out["embedding"] = [round(float(v), 5) for v in e * (1 + rel * rng.standard_normal(e.shape))]
    return out


def cmd_monitor_log(args: argparse.Namespace) -> int:
    from cvops.detector.runtime import OnnxDetector
    from cvops.drift.stats import compare
    from cvops.drift.profile import edge_reasons, profile_of, window_from_log
    from cvops.requestlog import RequestLog, log_files, read_log
    from cvops.serve.server import model_fingerprint

    cfg = recipe_config(args.recipe)
    mon = cfg.monitor
    low = float(mon.low_confidence)
    ref = reference_profile(Path(args.reference_dir))
    model = Path(args.model)
    detector = OnnxDetector(model)
    fingerprint = model_fingerprint(model)
    window = args.window or args.n
    facts = machine()
    work = Path(tempfile.mkdtemp(prefix="cvops-bench-log-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        paths = generate_images(cfg, work / "gen", args.seed, args.base)
        bodies = [p.read_bytes() for p in paths]
        base = []
        for b in bodies:
            t = time.perf_counter()
            rec = server_record(detector, b, fingerprint, 0.0)
            rec["latency_ms"] = round((time.perf_counter() - t) * 1000, 3)
            base.append(rec)
        base_s = time.perf_counter() - t0
        rng = np.random.default_rng(args.seed)
        log_dir = work / "requests"
        t0 = time.perf_counter()
        with RequestLog(log_dir, sample_rate=args.sample_rate, seed=args.seed) as rlog:
            for k in range(args.n):
                j = k % len(base)
                rlog.append(jitter(base[j], rng, args.jitter), image=bodies[j])
        write_s = time.perf_counter() - t0
        files = log_files(log_dir)
        log_mb = sum(p.stat().st_size for p in files) / 2**20
        images_kept = len(list((log_dir / "images").glob("*"))) if (log_dir / "images").is_dir() else 0

        steps: Dict[str, List[float]] = {k: [] for k in ("read_log", "window_from_log", "profile_of", "compare",
                                                          "edge_reasons")}
        summary: Dict[str, Any] = {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            records, skipped_alone = read_log(log_dir)
            steps["read_log"].append(time.perf_counter() - t)
            del records
            t = time.perf_counter()
            seen, skipped = window_from_log(log_dir, window, low)
            steps["window_from_log"].append(time.perf_counter() - t)
            t = time.perf_counter()
            prof = profile_of(seen)
            steps["profile_of"].append(time.perf_counter() - t)
            t = time.perf_counter()
            rep = compare(ref, prof, p_value=float(mon.p_value), psi_threshold=float(mon.psi_threshold),
                          permutations=int(mon.mmd_permutations), seed=int(mon.seed))
            steps["compare"].append(time.perf_counter() - t)
            t = time.perf_counter()
            reasons = edge_reasons(seen, ref.embeddings, low, float(mon.near_threshold), float(mon.overlap_iou),
                                   float(mon.embedding_quantile))
            steps["edge_reasons"].append(time.perf_counter() - t)
            summary = {"window_images": len(seen), "skipped_lines": skipped, "with_image_path": sum(
                1 for s in seen if s.path), "drift_detected": rep.drift_detected,
                "drift_features": rep.drift_features,
                "edge_cases": sum(1 for r in reasons if r),
                "edge_reasons": dict(Counter(x for r in reasons for x in r))}
            del seen, prof, reasons
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in steps.items()}
    stage = ("window_from_log", "profile_of", "compare", "edge_reasons")
    total = sum(med[k] for k in stage)
    rows = [["read_log (alone; also inside window_from_log)", f"{med['read_log']:.3f}", ""],
            [f"window_from_log(window={window})", f"{med['window_from_log']:.3f}",
             f"of which parsing records: {max(med['window_from_log'] - med['read_log'], 0):.3f}"],
            ["profile_of", f"{med['profile_of']:.3f}", ""],
            ["compare", f"{med['compare']:.3f}", f"{len(rep.features)} features, drift={summary['drift_detected']}"],
            ["edge_reasons", f"{med['edge_reasons']:.3f}", f"{summary['edge_cases']} edge cases"],
            ["total (window_from_log + profile_of + compare + edge_reasons)", f"{total:.3f}",
             f"{1e6 * total / max(summary['window_images'], 1):.0f} us per record"]]
    payload = {"benchmark": "monitor_log", "model": str(model), "reference": str(args.reference_dir),
               "records": args.n, "window": window, "base_images": len(base), "jitter": args.jitter,
               "log_mb": round(log_mb, 2), "log_files": len(files), "images_kept": images_kept,
               "write_s": write_s, "base_records_s": base_s, "repeats": args.repeats,
               "seconds": med, "seconds_all": steps, "total_s": total, **summary,
               "machine": facts, "load_1min_end": load_avg()}
    emit(f"monitor on a {args.n}-record request log ({log_mb:.1f} MiB, {len(files)} file(s), {images_kept} images; "
         f"median of {args.repeats}; load avg at start {facts['load_1min_start']:.2f})",
         md_table(["step", "seconds", "note"], rows), payload)
    return 0


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, reference: bool) -> None:
        p.add_argument("--model", required=True, help="exported model.onnx")
        p.add_argument("--reference-dir", required=reference, default=None,
                       help="reference profile directory (profile.npz)" + ("" if reference else
                                                                            "; load: also run the live drift gauges"))
        p.add_argument("--recipe", default="quickstart", help="recipe giving data.synthetic and monitor settings")
        p.add_argument("--tmp", default=None, help="parent of the scratch directory (default: system temp)")

    p = sub.add_parser("load", help="server vs bare ONNX Runtime throughput")
    common(p, False)
    p.add_argument("--n", type=int, default=1000, help="requests (and bare images)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (and bare threads)")
    p.add_argument("--images", type=int, default=8, help="distinct generated JPEGs")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.add_argument("--seed", type=int, default=7000, help="generator seed of the request images")
    p.add_argument("--sample-rate", type=float, default=0.1, help="share of request images the log keeps")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (each gets cores // workers "
                   "ONNX Runtime threads)")
    p.add_argument("--lanes", type=int, default=0, help="serve.lanes: inference lanes per worker (0: one per core "
                   "of the worker, each with a one-thread session; 1: one lane using all of the worker's cores)")
    p.add_argument("--cost-repeats", type=int, default=30, help="single-thread step timings")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (request log, server output)")
    p.set_defaults(fn=cmd_load)

    p = sub.add_parser("drift", help="alarm rates on unshifted and shifted generated windows")
    common(p, True)
    p.add_argument("--windows", type=int, default=20, help="windows per condition")
    p.add_argument("--size", type=int, default=100, help="images per window")
    p.add_argument("--seed0", type=int, default=5000, help="window i uses generator seed seed0 + i")
    p.add_argument("--shift", default=None, help="the strong shift, e.g. brightness=0.55,blur=1.5 "
                                                 "(default: the recipe's monitor.shift)")
    p.add_argument("--mild", default="brightness=0.8", help="the mild shift")
    p.add_argument("--verbose", action="store_true", help="one line per window on stderr")
    p.set_defaults(fn=cmd_drift)

    p = sub.add_parser("monitor-log", help="time the monitor on a big request log")
    common(p, True)
    p.add_argument("--n", type=int, default=10000, help="records in the log")
    p.add_argument("--window", type=int, default=None, help="monitor window (default: --n)")
    p.add_argument("--base", type=int, default=300, help="generated images run through the model")
    p.add_argument("--seed", type=int, default=9000, help="generator seed of the base images")
    p.add_argument("--jitter", type=float, default=0.02, help="relative noise of replicated records")
    p.add_argument("--sample-rate", type=float, default=0.1, help="share of records that keep their image")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (the log)")
    p.set_defaults(fn=cmd_monitor_log)

    args = ap.parse_args(argv)
    for name in ("n", "concurrency", "windows", "size", "repeats", "base", "images"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            ap.error(f"--{name} must be at least 1")
    fn: Callable[[argparse.Namespace], int] = args.fn
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
