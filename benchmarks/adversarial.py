"""What cvops does with hostile input, and what the hardening costs.

::

    .venv/bin/python benchmarks/adversarial.py                       # everything, baseline = the last commit before the hardening
    .venv/bin/python benchmarks/adversarial.py --baseline <rev> --rounds 3 --requests 400
    .venv/bin/python benchmarks/adversarial.py --skip-cost            # the attack figures only

Figures (goal in brackets):

- inputs tried, by entry point: recipe routes (each a real composed recipe or
  override), hostile datasets through the real curate stage, hostile HTTP
  requests in concurrent batches with valid ones against the real server,
  seeded random mutations of upload bodies and of COCO files;
- 5xx answers (0), crashes (0: a curate that dies with anything but a clear
  SourceError, a reader that raises), calls escaped (0: a canary a recipe tried
  to create exists, or the route was not refused), labelled images lost (0:
  images with labels dropped without a row, or dropped as duplicates although
  their labels differ, or YOLO boxes not delivered), valid requests failed (0);
- the cost: serve throughput (8 clients) and curate time (BCCD from
  ``../shared/data`` when present, else a generated YOLO set), this checkout vs
  ``--baseline`` checked out into a temporary git worktree, alternated round
  by round on the same machine (goal: at most 3 % slower).

Everything runs on a private mongod (FiftyOne's binary, a temporary folder,
a free port), never the user's FiftyOne database.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
BASELINE = "4c759b6"  # the last commit before issue 10's hardening
BCCD = ROOT.parent / "shared" / "data" / "bccd_yolo" / "Yolov5" / "dataset" / "data.yaml"


def _module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ recipes
def recipes(work: Path) -> Dict[str, Any]:
    """Every recipe and override route of tests/adversarial/test_recipe_is_data.py, through preflight."""
    from cvops.config import ConfigError, preflight

    routes = _module(TESTS / "adversarial" / "test_recipe_is_data.py")
    tried = escaped = 0
    for what, body, _ in routes.RECIPE_ROUTES:
        case = work / f"recipe-{tried}"
        (case / "recipes").mkdir(parents=True)
        canary = case / "pwned"
        evil_py = case / "evil.py"
        evil_py.write_text(f"import os\nos.makedirs({str(canary)!r})\n")
        (case / "recipes" / "evil.yaml").write_text(routes.HEADER + body.format(canary=canary, evil_py=evil_py))
        os.environ["CVOPS_RECIPE_PATH"] = str(case / "recipes")
        tried += 1
        try:
            preflight(["recipe=evil"])
            refused = False
        except ConfigError as e:
            refused = "not allowed" in str(e)
        escaped += int(not refused or canary.exists())
    os.environ.pop("CVOPS_RECIPE_PATH", None)
    for override, _ in routes.OVERRIDE_ROUTES:
        tried += 1
        try:
            preflight(["recipe=quickstart", override])
            escaped += 1
        except ConfigError as e:
            escaped += int("not allowed" not in str(e))
    return {"tried": tried, "escaped": escaped}


# ------------------------------------------------------------------ curate
def _curate(project: str, store: Path, run_dir: Path, *overrides: str) -> Dict[str, Any]:
    from cvops.config import compose_config
    from cvops.runner import Runner

    cfg = compose_config([f"project={project}", "stages=[curate]", f"paths.store={store}", *overrides])
    Runner(cfg, run_dir).run()
    return json.loads((run_dir / "run.json").read_text())["stages"]["curate"]["metrics"]


def curate_hostile(work: Path) -> Dict[str, Any]:
    """Hostile datasets through the real curate stage: crashes, conservation, labels delivered."""
    from helpers import make_data

    from cvops.errors import SourceError

    nothing_lost = _module(TESTS / "adversarial" / "test_nothing_lost.py")
    cases: List[Tuple[str, Callable[[Path], Tuple[List[str], int]]]] = []

    def coco(d: Path):
        make_data.coco_hostile(d / "coco", d / "outside")
        return ["data=coco", f"data.path={d / 'coco' / 'annotations.json'}"], -1

    def voc(d: Path):
        make_data.voc_hostile(d / "voc", d / "outside")
        return ["data=voc", f"data.path={d / 'voc'}"], -1

    def archive(d: Path):
        from PIL import Image

        (d / "members" / "JPEGImages").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(make_data.picture(64, 48, 300 + i)).save(d / "members" / "JPEGImages" / f"{i}.png")
        make_data.zip_with_bad_members(d / "set.zip", d / "members")
        return ["data=images", f"data.path={d / 'set.zip'}"], 4  # the four good members arrive

    def camera(d: Path):
        gen = nothing_lost.fixed_camera(d / "cam")
        return ["data=coco", f"data.path={gen['json']}"], gen["shots"] + 1

    for name, fn in (("coco", coco), ("voc", voc), ("archive", archive), ("fixed camera", camera)):
        cases.append((name, fn))
    for layout in ("ultralytics", "ultralytics_nested_path", "ultralytics_lists", "roboflow", "beside"):
        def yolo(d: Path, layout: str = layout):
            wrote = make_data.yolo_layout(d / "yolo", layout)
            return ["data=yolo", f"data.path={d / 'yolo' / 'data.yaml'}", f"+_boxes={wrote['boxes']}"], -1
        cases.append((f"yolo {layout}", yolo))
    out: Dict[str, Any] = {"datasets": 0, "crashes": 0, "clear_errors": 0, "labelled_images_lost": 0,
                           "rows": 0, "detail": {}}
    for k, (name, make) in enumerate(cases):
        d = work / f"curate-{k}"
        d.mkdir()
        overrides, expect_kept = make(d)
        boxes = next((int(o.split("=")[1]) for o in overrides if o.startswith("+_boxes=")), None)
        overrides = [o for o in overrides if not o.startswith("+_boxes=")]
        out["datasets"] += 1
        try:
            m = _curate(f"adv{uuid.uuid4().hex[:6]}", d / "store", d / "run", *overrides)
        except SourceError as e:
            out["clear_errors"] += 1
            out["detail"][name] = f"SourceError: {str(e)[:120]}"
            continue
        except Exception as e:  # a crash
            out["crashes"] += 1
            out["detail"][name] = f"CRASH {type(e).__name__}: {str(e)[:200]}"
            continue
        lost = m.get("labelled_images_dropped", 0)
        lost += m["images_in"] - m["images_kept"] - m["images_quarantined"] - m["images_deduplicated"]
        if expect_kept >= 0:
            lost += max(0, expect_kept - m["images_kept"])
        if boxes is not None:
            lost += boxes - m["boxes_kept"] - m["boxes_quarantined"]
        out["labelled_images_lost"] += lost
        out["rows"] += m["images_quarantined"] + m.get("files_skipped", 0) + m["boxes_quarantined"]
        out["detail"][name] = {k2: m.get(k2) for k2 in ("images_in", "images_kept", "images_quarantined",
                                                         "files_skipped", "boxes_in", "boxes_kept",
                                                         "images_grouped", "labelled_images_dropped")}
    return out


def annotation_mutations(work: Path, n: int, seed: int) -> Dict[str, Any]:
    """Seeded random mutations of a valid COCO file through the reader: only SourceError may escape."""
    from cvops.curate.sources.coco import read_coco
    from cvops.curate.sources.ledger import Ledger
    from cvops.errors import SourceError

    rng = random.Random(seed)
    root = work / "coco-mut"
    root.mkdir()
    base = {"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(1, 4)],
            "annotations": [{"id": i, "image_id": 1 + i % 3, "category_id": 1, "bbox": [1, 2, 10, 10]}
                            for i in range(1, 6)], "categories": [{"id": 1, "name": "a"}]}
    junk = [None, -1, 0, 1e308, float("nan"), "", "../../etc/passwd", "/etc/passwd", [], {}, [1, 2], "x" * 300, True]
    crashes: List[str] = []
    for i in range(n):
        doc = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 4)):
            section = rng.choice(["images", "annotations", "categories", None])
            if section is None:
                doc[rng.choice(list(doc))] = rng.choice(junk)
                continue
            if not isinstance(doc.get(section), list) or not doc[section]:
                continue
            entry = rng.choice(doc[section])
            if isinstance(entry, dict) and entry:
                key = rng.choice(list(entry) + ["extra"])
                if rng.random() < 0.2:
                    entry.pop(key, None)
                else:
                    entry[key] = rng.choice(junk)
        path = root / f"{i}.json"
        path.write_text(json.dumps(doc))
        try:
            read_coco(path, None, "coco", Ledger())
        except SourceError:
            pass
        except Exception as e:
            crashes.append(f"{type(e).__name__}: {e}"[:200])
    return {"tried": n, "crashes": len(crashes), "examples": crashes[:5]}


# ------------------------------------------------------------------- serve
SERVER = """
import json, sys
c = json.loads(sys.argv[1])
from cvops.serve.server import serve
import inspect
if "cfg" in inspect.signature(serve).parameters:  # one ServeConfig handed down (since issue #11)
    from cvops.schema import ServeConfig
    serve(c["model"], ServeConfig(host="127.0.0.1", port=c["port"], sample_rate=0.1, max_batch=8), log_dir=c["log_dir"])
else:  # the baseline worktree of an older commit
    serve(c["model"], host="127.0.0.1", port=c["port"], log_dir=c["log_dir"], sample_rate=0.1, max_batch=8)
"""


class Server:
    """``cvops.serve.server.serve`` from the cvops checkout at ``code`` in a child process."""

    def __init__(self, code: Path, model: Path, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(code)}
        env.pop("CVOPS_TOKEN", None)
        config = {"model": str(model), "port": self.port, "log_dir": str(work / f"log-{self.port}")}
        self.out = open(work / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(config)], stdout=self.out,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(code))
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {(work / f'server-{self.port}.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise SystemExit("server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


def _valid_bodies(n: int = 8) -> List[bytes]:
    import cv2

    from helpers.make_data import picture

    out = []
    for i in range(n):
        ok, buf = cv2.imencode(".jpg", cv2.resize(picture(64, 48, i), (320, 240)))
        out.append(buf.tobytes())
    return out


def _png(arr: Any) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def hostile_bodies() -> List[Tuple[str, bytes, str]]:
    """(name, body, content type) of requests a server must answer with a 4xx."""
    import numpy as np

    from helpers.make_data import png_header

    tmp = Path(tempfile.mkdtemp())
    png_header(tmp / "bomb.png", 60000, 60000)
    png_header(tmp / "wide.png", 100000, 1)
    valid = _valid_bodies(1)[0]
    return [
        ("1300x1 png", _png(np.full((1, 1300, 3), 128, np.uint8)), "image/png"),
        ("1x1300 png", _png(np.full((1300, 1, 3), 128, np.uint8)), "image/png"),
        ("bomb header", (tmp / "bomb.png").read_bytes(), "image/png"),
        ("100000x1 header", (tmp / "wide.png").read_bytes(), "image/png"),
        ("truncated jpeg", valid[: len(valid) // 2], "image/jpeg"),
        ("garbage", os.urandom(2000), "image/jpeg"),
        ("empty", b"", "image/jpeg"),
        ("text as image", b"hello", "text/plain"),
        ("eps as jpeg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "image/jpeg"),
    ]


def costly_body() -> bytes:
    """A valid 40 MP 16-bit PNG of ~80 KB: within serve.max_pixels, ~0.3 GB to decode (the budget's case)."""
    import numpy as np
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(np.zeros((4000, 10000), np.uint16)).save(b, format="PNG")
    return b.getvalue()


def _post(url: str, body: bytes, ctype: str) -> int:
    import httpx

    try:
        return httpx.post(f"{url}/v1/predict", content=body, headers={"Content-Type": ctype}, timeout=120).status_code
    except httpx.HTTPError:
        return -1


def _disconnect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                  + b"\xff\xd8\xff" + b"\0" * 1000)


def serve_hostile(server: Server, rounds: int) -> Dict[str, Any]:
    """Each round: 8 valid requests and every hostile one at once, plus a client that disconnects mid-body."""
    valid, hostile, costly = _valid_bodies(), hostile_bodies(), costly_body()
    out: Dict[str, Any] = {"tried": 0, "5xx": 0, "valid_failed": 0, "hostile_not_4xx": [], "costly": {}}
    with ThreadPoolExecutor(max_workers=len(valid) + len(hostile) + 1) as pool:
        for _ in range(rounds):
            fv = [pool.submit(_post, server.url, b, "image/jpeg") for b in valid]
            fh = [(name, pool.submit(_post, server.url, b, ct)) for name, b, ct in hostile]
            fc = [pool.submit(_post, server.url, costly, "image/png") for _ in range(2)]  # 200 or 503, never 5xx else
            pool.submit(_disconnect, server.port).result()
            out["tried"] += len(fv) + len(fh) + 1
            for f in fv:
                code = f.result()
                out["valid_failed"] += int(code != 200)
                out["5xx"] += int(code >= 500)
            for f in fc:
                code = f.result()
                out["tried"] += 1
                out["costly"][str(code)] = out["costly"].get(str(code), 0) + 1
                out["5xx"] += int(code >= 500 and code != 503)
            for name, f in fh:
                code = f.result()
                out["5xx"] += int(code >= 500)
                if not 400 <= code < 500:
                    out["hostile_not_4xx"].append(f"{name}: {code}")
    out["server_alive"] = server.proc.poll() is None
    return out


def body_mutations(server: Server, n: int, seed: int) -> Dict[str, Any]:
    """Seeded random mutations of valid JPEG/PNG bodies (truncation, bit flips, spliced bytes), 8 at a time."""
    import numpy as np

    rng = random.Random(seed)
    seeds = _valid_bodies(4) + [_png(np.full((48, 64, 3), i * 40, np.uint8)) for i in range(4)]
    bodies = []
    for _ in range(n):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.4:
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            elif op < 0.6:
                del b[rng.randrange(1, len(b)):]
            elif op < 0.8:
                i = rng.randrange(len(b))
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:  # corrupt a header field: the first 64 bytes hold the dimensions
                i = rng.randrange(min(64, len(b)))
                b[i] = rng.randrange(256)
        bodies.append(bytes(b))
    ctypes = ["image/jpeg", "image/png", "application/octet-stream", ""]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda b: _post(server.url, b, rng.choice(ctypes)), bodies))
    return {"tried": n, "5xx": sum(1 for c in codes if c >= 500), "transport_errors": codes.count(-1),
            "by_status": {str(c): codes.count(c) for c in sorted(set(codes))}}


# -------------------------------------------------------------------- cost
def throughput(server: Server, n: int) -> float:
    """Requests per second of ``n`` valid JPEG requests from 8 clients."""
    import httpx

    bodies = _valid_bodies()
    counter, lock, bad = [0], threading.Lock(), [0]

    def worker() -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = counter[0]
                    if i >= n:
                        return
                    counter[0] += 1
                r = c.post(f"{server.url}/v1/predict", content=bodies[i % len(bodies)],
                           headers={"Content-Type": "image/jpeg"})
                if r.status_code != 200:
                    bad[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if bad[0]:
        raise SystemExit(f"{bad[0]} valid requests failed during the throughput run")
    return n / (time.perf_counter() - t)


def curate_seconds(code: Path, data_yaml: Path, work: Path) -> Tuple[float, float]:
    """Wall time of ``cvops ... stages=[curate]`` and of its read + decode phases (what the hardening changed)."""
    store = work / f"store-{uuid.uuid4().hex[:6]}"
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cvops", f"project=adv{uuid.uuid4().hex[:6]}", "data=yolo",
                        f"data.path={data_yaml}", "stages=[curate]", f"paths.store={store}", "tracker=none"],
                       env={**os.environ, "PYTHONPATH": str(code)}, cwd=str(work), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"curate failed ({code}):\n{r.stderr[-3000:]}")
    wall = time.perf_counter() - t
    phases = json.loads(next(store.glob("curate/*/summary.json")).read_text())["seconds_by_phase"]
    return wall, phases["read"] + phases["decode"]


def cost(baseline: Path, model: Path, work: Path, rounds: int, requests: int) -> Dict[str, Any]:
    from helpers import make_data

    data = BCCD
    if not data.is_file():
        make_data.yolo_layout(work / "gen-yolo", "roboflow")
        data = work / "gen-yolo" / "data.yaml"
    res: Dict[str, Dict[str, List[float]]] = {"serve_rps": {"baseline": [], "now": []},
                                              "curate_s": {"baseline": [], "now": []}}
    phases: Dict[str, List[float]] = {"baseline": [], "now": []}
    for r in range(rounds):
        order = [("baseline", baseline), ("now", ROOT)] if r % 2 == 0 else [("now", ROOT), ("baseline", baseline)]
        for name, code in order:
            server = Server(code, model, work)
            try:
                throughput(server, 40)  # warm-up
                res["serve_rps"][name].append(throughput(server, requests))
            finally:
                server.stop()
            wall, hardened = curate_seconds(code, data, work)
            res["curate_s"][name].append(wall)
            phases[name].append(hardened)
    out: Dict[str, Any] = {"data": str(data), "rounds": rounds, "requests": requests}
    for k, v in res.items():
        b, n = statistics.median(v["baseline"]), statistics.median(v["now"])
        out[k] = {"baseline": round(b, 2), "now": round(n, 2), "all": v,
                  "slower_pct": round(100 * ((b / n - 1) if k == "serve_rps" else (n / b - 1)), 1)}
    out["curate_hardened_phases"] = f"{statistics.median(phases['baseline']):.2f} -> {statistics.median(phases['now']):.2f}"
    return out


# -------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare the cost against")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of the cost comparison")
    ap.add_argument("--requests", type=int, default=400, help="requests per throughput measurement")
    ap.add_argument("--mutations", type=int, default=2000, help="random upload bodies and COCO files each")
    ap.add_argument("--model", type=Path, help="an exported model.onnx (default: a tiny untrained RTMDet)")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-attacks", action="store_true", help="only the cost comparison")
    ap.add_argument("--out", type=Path, help="write the summary JSON here too")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cvops-adversarial-"))
    from helpers.mongo import PrivateMongod

    mongod = PrivateMongod(work / "mongo")
    os.environ["FIFTYONE_DATABASE_URI"] = mongod.uri
    os.environ.setdefault("WANDB_MODE", "offline")
    baseline_dir: Optional[Path] = None
    summary: Dict[str, Any] = {}
    try:
        from helpers.tiny_model import make_onnx

        model = args.model or make_onnx(work / "model")
        t = time.perf_counter()
        if not args.skip_attacks:
            summary["recipes"] = recipes(work)
            summary["curate"] = curate_hostile(work)
            summary["annotation_mutations"] = annotation_mutations(work, args.mutations, seed=0)
            server = Server(ROOT, model, work)
            try:
                summary["http"] = serve_hostile(server, rounds=5)
                summary["body_mutations"] = body_mutations(server, args.mutations, seed=0)
            finally:
                server.stop()
            summary["attack_seconds"] = round(time.perf_counter() - t, 1)
        if not args.skip_cost:
            baseline_dir = work / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(baseline_dir),
                            args.baseline], check=True)
            summary["cost"] = cost(baseline_dir, model, work, args.rounds, args.requests)
    finally:
        mongod.stop()
        if baseline_dir is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_dir)])
        shutil.rmtree(work, ignore_errors=True)
    s = summary
    figures: Dict[str, Any] = {}
    if not args.skip_attacks:
        figures.update(_attack_figures(s))
    if "cost" in s:
        for key, what in (("serve_rps", "serve throughput, req/s"), ("curate_s", "curate time, s")):
            c = s["cost"][key]
            figures[f"{what} (baseline -> now)"] = (f"{c['baseline']} -> {c['now']} ({c['slower_pct']:+.1f}% slower; "
                                                   f"goal <= 3%; rounds {min(c['all']['baseline']):.1f}-"
                                                   f"{max(c['all']['baseline']):.1f} vs {min(c['all']['now']):.1f}-"
                                                   f"{max(c['all']['now']):.1f})")
        figures["curate read+decode phases, s (baseline -> now)"] = s["cost"]["curate_hardened_phases"]
    summary["figures"] = figures
    width = max(len(k) for k in figures)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in figures.items()))
    print(json.dumps({k: v for k, v in summary.items() if k != "figures"}, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, default=str))
    return 0


def _attack_figures(s: Dict[str, Any]) -> Dict[str, Any]:
    tried = (s["recipes"]["tried"] + s["curate"]["datasets"] + s["annotation_mutations"]["tried"] + s["http"]["tried"]
             + s["body_mutations"]["tried"])
    return {
        "inputs tried": tried,
        "5xx answers (goal 0)": s["http"]["5xx"] + s["body_mutations"]["5xx"],
        "crashes (goal 0)": s["curate"]["crashes"] + s["annotation_mutations"]["crashes"] + int(not s["http"]["server_alive"]),
        "calls escaped (goal 0)": s["recipes"]["escaped"],
        "labelled images lost (goal 0)": s["curate"]["labelled_images_lost"],
        "valid requests failed (goal 0)": s["http"]["valid_failed"],
        "hostile requests not answered 4xx (goal 0)": len(s["http"]["hostile_not_4xx"]),
        "costly valid requests (40 MP 16-bit PNG) answered": s["http"]["costly"],
    }


if __name__ == "__main__":
    sys.exit(main())
