"""Hostile requests against the serving endpoint: each one fails alone, as a 4xx naming its limit.

Real components throughout: the tiny RTMDet exported to ONNX, ONNX Runtime,
a uvicorn server in a subprocess reached over TCP (for everything concurrent:
batches mixing hostile and valid requests, slow bodies, disconnects), the
FastAPI app through Starlette's TestClient in-process for the rest, and a
Hypothesis fuzz (fixed seed) over upload bodies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.apps import app_args  # noqa: E402
from helpers.images import encode, pil_bytes  # noqa: E402
from helpers.net import free_port  # noqa: E402

from cvops.detector.runtime import OnnxDetector, Prepared, Preprocess  # noqa: E402
from cvops.schema import ServeConfig  # noqa: E402
from cvops.serve.app import create_app  # noqa: E402
from cvops.serve.batching import MicroBatcher  # noqa: E402
from cvops.serve.budget import decode_cost  # noqa: E402
from cvops.requestlog import read_log  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
INFO = {"fingerprint": "fp-hostile"}
# what an error body must never carry: file paths, source files, object reprs
INTERNAL = re.compile(r"(?:/[\w.@+-]+){2,}|\b[\w-]+\.(?:py|pyx|cpp|cc|so)\b|\bat 0x[0-9a-f]+|Traceback")


# ---------------------------------------------------------------------------
# Fixtures and image builders
# ---------------------------------------------------------------------------


@pytest.fixture
def make_client(detector: OnnxDetector) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(det: Any = None, **kwargs: Any) -> TestClient:
        client = TestClient(create_app(det or detector, **app_args(INFO, **kwargs)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = np.linspace(40, 200, max(w, 1), dtype=np.uint8)[None, :, None]
    for _ in range(3):
        x, y = int(rng.integers(0, max(w - 4, 1))), int(rng.integers(0, max(h - 4, 1)))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + max(w // 4, 1), y + max(h // 4, 1)), color, -1)
    return img


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def zero_png(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A valid all-zero PNG of any size and mode, built row by row (a 400 MP one is about 50 KB)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = bytes(1 + (width * channels * bit_depth + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * min(500, height - i)) for i in range(0, height, 500)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def errors(m: dict, reason: str) -> float:
    return m.get(("cvops_errors_total", frozenset({("reason", reason)})), 0)


def requests_with(m: dict, status: int) -> float:
    return m.get(("cvops_requests_total", frozenset({("status", str(status)), ("source", "default")})), 0)


def ok_request(client: TestClient) -> None:
    r = client.post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text


VALID_JPG = encode(scene(48, 64, seed=9))


# ---------------------------------------------------------------------------
# A real server in a subprocess
# ---------------------------------------------------------------------------

SERVER = """\
import json, sys
from cvops.schema import ServeConfig
from cvops.serve.server import serve
c = json.loads(sys.argv[1])
fields = set(ServeConfig.__dataclass_fields__)
serve(c.pop("model_path"), ServeConfig(**{k: c.pop(k) for k in list(c) if k in fields}), **c)
"""


class Server:
    """``cvops.serve.server.serve`` in a child process on a free port; its output goes to a file."""

    def __init__(self, model_path: Path, tmp_path: Path, **config: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = tmp_path / "server.out"
        self.log_dir = tmp_path / "log"
        config = {"model_path": str(model_path), "host": "127.0.0.1", "port": self.port, "info": INFO,
                  "log_dir": str(self.log_dir), "sample_rate": 0.0, "token_env": "CVOPS_TEST_NO_TOKEN", **config}
        env = {k: v for k, v in os.environ.items() if k != "CVOPS_TEST_NO_TOKEN"}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(config)], stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=tmp_path)

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.out.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.2)

    def metrics(self) -> dict:
        import httpx

        return metric_samples(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.out.read_text()


def _answer(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except ConnectionResetError:
        pass
    return data, time.monotonic() - t0


def raw_exchange(port: int, head: bytes, body: bytes, trickle: bool) -> tuple[int, bytes]:
    """Send a request by hand; with ``trickle`` the body goes one byte every 0.2 s. Returns (status, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    stop = threading.Event()

    def feed() -> None:
        for i in range(len(body)):
            if stop.wait(0.2):
                return
            try:
                sock.sendall(body[i:i + 1])
            except OSError:
                return

    sock.sendall(head)
    feeder = threading.Thread(target=feed, daemon=True)
    if trickle:
        feeder.start()
    else:
        sock.sendall(body)
    try:
        data, _ = _answer(sock, 20)
    finally:
        stop.set()
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def slow_body(port: int) -> tuple[int, bytes]:
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n"
            b"Connection: close\r\n\r\n")
    return raw_exchange(port, head, VALID_JPG[:200], trickle=True)


def disconnect(port: int) -> None:
    """Start an upload of 200 kB, send 1 kB of it, hang up."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: 200000\r\n\r\n"
                 + VALID_JPG[:1000])
    time.sleep(0.3)
    sock.close()


def test_hostile_requests_in_concurrent_batches_fail_alone(model_path: Path, tmp_path: Path) -> None:
    """Valid and hostile requests at once against a real server batching 8: valid all 200, hostile all 4xx."""
    import httpx

    server = Server(model_path, tmp_path, max_batch=8, batch_wait_ms=40, max_aspect_ratio=2000,
                    decode_memory_mb=64, decode_wait_s=10, body_timeout_s=1.5, max_upload_mb=0.5)
    exif = Image.Exif()
    exif[0x0112] = 6
    valid = {  # name: (body, content type, (width, height) answered)
        "jpeg": (encode(scene(120, 160, 1)), "image/jpeg", (160, 120)),
        "png": (encode(scene(96, 128, 2), ".png"), "image/png", (128, 96)),
        "png-1300x1": (encode(scene(1, 1300, 3), ".png"), "image/png", (1300, 1)),  # zero letterbox height before
        "png-1x1300": (encode(scene(1300, 1, 4), ".png"), "image/png", (1, 1300)),
        "jpeg-exif-rotated": (pil_bytes(Image.fromarray(scene(40, 80, 5)), "JPEG", exif=exif.tobytes()),
                              "image/jpeg", (40, 80)),
        "png-16bit": (pil_bytes(Image.fromarray(np.full((50, 70), 30000, np.uint16))), "image/png", (70, 50)),
        "png-rgba": (pil_bytes(Image.fromarray(np.dstack([scene(60, 60, 6), np.full((60, 60), 9, np.uint8)]))),
                     "image/png", (60, 60)),
        "jpeg-gray": (pil_bytes(Image.fromarray(scene(64, 48, 7)[..., 0]), "JPEG"), "image/jpeg", (48, 64)),
    }
    jpg = valid["jpeg"][0]
    hostile = {  # name: (body, content type, status, fragment of the error)
        "aspect-1x5000": (zero_png(5000, 1), "image/png", 400, "serve.max_aspect_ratio"),
        "bomb-400MP": (zero_png(20000, 20000), "image/png", 413, "serve.max_pixels"),
        "16bit-3000x3000-over-budget": (zero_png(3000, 3000, 16, 0), "image/png", 413, "serve.decode_memory_mb"),
        "truncated": (jpg[: len(jpg) // 2], "image/jpeg", 400, "truncated"),
        "garbage": (os.urandom(3000), "image/png", 400, "not a JPEG or PNG"),
        "wrong-type": (jpg, "text/html", 415, "text/html"),
        "too-large": (os.urandom(600_000), "image/jpeg", 413, "serve.max_upload_mb"),
        "unterminated-multipart": (b"--xx\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc",
                                   "multipart/form-data; boundary=xx", 400, "no field named 'image'"),
    }
    try:
        server.wait_ready()
        barrier = threading.Barrier(2 * len(valid) + len(hostile) + 2)

        def post(body: bytes, ctype: str) -> httpx.Response:
            barrier.wait(timeout=30)
            return httpx.post(f"{server.url}/v1/predict", content=body, headers={"Content-Type": ctype},
                              timeout=60)

        def slow() -> tuple[int, bytes]:
            barrier.wait(timeout=30)
            return slow_body(server.port)

        def hang_up() -> None:
            barrier.wait(timeout=30)
            disconnect(server.port)

        with ThreadPoolExecutor(2 * len(valid) + len(hostile) + 2) as pool:
            good = {(n, k): pool.submit(post, b, c) for k in range(2) for n, (b, c, _) in valid.items()}
            bad = {n: pool.submit(post, b, c) for n, (b, c, _, _) in hostile.items()}
            slow_f, gone_f = pool.submit(slow), pool.submit(hang_up)
            good_r = {key: f.result(timeout=120) for key, f in good.items()}
            bad_r = {name: f.result(timeout=120) for name, f in bad.items()}
            slow_status, slow_json = slow_f.result(timeout=120)
            gone_f.result(timeout=60)
        for (name, _), r in good_r.items():
            assert r.status_code == 200, (name, r.text)
            assert (r.json()["width"], r.json()["height"]) == valid[name][2], name
        for name, r in bad_r.items():
            _, _, status, fragment = hostile[name]
            assert r.status_code == status, (name, r.text)
            assert set(r.json()) == {"error"} and fragment in r.json()["error"], (name, r.json())
            assert not INTERNAL.search(r.json()["error"]), (name, r.json())
        assert slow_status == 408 and "serve.body_timeout_s" in json.loads(slow_json)["error"]

        deadline = time.monotonic() + 10
        while errors(m := server.metrics(), "client_disconnect") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert requests_with(m, 200) == 2 * len(valid) and requests_with(m, 500) == 0
        expected = {"aspect_ratio": 1, "too_many_pixels": 1, "decode_memory": 1, "truncated_image": 1,
                    "bad_image": 1, "unsupported_media_type": 1, "too_large": 1, "missing_image": 1,
                    "body_timeout": 1, "client_disconnect": 1}
        assert {r: errors(m, r) for r in expected} == expected
        batches = m[("cvops_batch_size_count", frozenset())]
        assert batches < 2 * len(valid), "no two valid requests shared a batch: the test proves nothing"
        assert m[("cvops_batch_size_sum", frozenset())] == 2 * len(valid)
    finally:
        out = server.stop()
    assert "Traceback" not in out and "Exception in ASGI" not in out, out
    records, skipped = read_log(server.log_dir)
    statuses = sorted(r["status"] for r in records)
    assert skipped == 0 and statuses.count(200) == 2 * len(valid) and 499 in statuses and 408 in statuses
    assert not any(s >= 500 and s != 499 for s in statuses)


# ---------------------------------------------------------------------------
# Isolation inside a batch, failures of the server's own work
# ---------------------------------------------------------------------------


def test_a_failing_batch_is_retried_one_by_one(detector: OnnxDetector) -> None:
    """ONNX Runtime refuses a batch holding one float64 tensor; each image then runs alone: only that one fails."""
    rng = np.random.default_rng(5)
    good = [detector.preprocess.prepare(rng.integers(0, 255, (70 + 9 * i, 90, 3), dtype=np.uint8)) for i in range(6)]
    bad = Prepared(good[0].tensor.astype(np.float64), good[0].scale, good[0].size)
    items = good[:3] + [bad] + good[3:]
    with pytest.raises(Exception, match="double|float64|type"):  # the real error of ONNX Runtime
        detector.detect([bad])
    retries: list[int] = []
    batcher = MicroBatcher(detector.detect, max_batch=8, wait_ms=200, on_retry=retries.append)
    results: list[Any] = [None] * len(items)
    start = threading.Barrier(len(items))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = batcher.submit(items[i])
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert retries and max(retries) > 1
    assert isinstance(results[3], Exception)
    for item, got in zip(good, results[:3] + results[4:]):
        alone = detector.detect([item])[0]
        assert not isinstance(got, Exception), got
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
        np.testing.assert_allclose(got.boxes, alone.boxes, atol=1e-3)


class Float64Preprocess(Preprocess):
    """The real preprocessing, handing the graph float64: ONNX Runtime really refuses it."""

    def prepare(self, bgr: np.ndarray) -> Prepared:
        p = super().prepare(bgr)
        return Prepared(p.tensor.astype(np.float64), p.scale, p.size)


def test_inference_failure_answers_an_error_id_and_logs_the_detail(
        make_client: Callable[..., TestClient], model_path: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from cvops.requestlog import RequestLog

    broken = OnnxDetector(model_path)
    broken.preprocess = Float64Preprocess(**broken.preprocess.to_dict())
    client = make_client(broken, log=RequestLog(tmp_path, sample_rate=1.0))
    with caplog.at_level(logging.ERROR, logger="cvops.serve"):
        r = client.post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 500
    m = re.fullmatch(r"inference failed; error id ([0-9a-f]{12}) in the server log", r.json()["error"])
    assert m and set(r.json()) == {"error"}, r.json()
    assert m.group(1) in caplog.text and "double" in caplog.text.lower()  # the detail: in the log only
    (record,), _ = read_log(tmp_path)
    assert record["status"] == 500 and record["error"] == "inference" and "image_path" not in record
    metrics = metric_samples(client.get("/metrics").text)
    assert requests_with(metrics, 500) == 1 and errors(metrics, "inference") == 1

    broken.preprocess = Preprocess(**{**broken.preprocess.to_dict(), "mean": [0.0, 0.0]})  # preprocessing raises
    r = make_client(broken).post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 500 and re.fullmatch(r"preprocessing failed; error id [0-9a-f]{12} in the server log",
                                                 r.json()["error"])


def test_any_unexpected_exception_is_a_json_500_without_detail(make_client: Callable[..., TestClient],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(token="t0k")

    @client.app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("cannot open /srv/secret/model/weights.onnx (see onnxruntime/core/session.cc)")

    with caplog.at_level(logging.ERROR, logger="cvops.serve"):
        r = client.get("/boom", headers={"Authorization": "Bearer t0k"})
    assert r.status_code == 500 and set(r.json()) == {"error"}
    assert not INTERNAL.search(r.json()["error"]) and "secret" not in r.text
    eid = re.search(r"error id ([0-9a-f]{12})", r.json()["error"]).group(1)
    assert any(eid in rec.getMessage() for rec in caplog.records)
    assert "/srv/secret" in caplog.text
    ok = client.post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg",
                                                                 "Authorization": "Bearer t0k"})
    assert ok.status_code == 200


def test_model_info_shows_no_path(model_path: Path) -> None:
    from cvops.serve.server import build_app

    with TestClient(build_app(model_path, ServeConfig(max_batch=1), info={"recipe": "tiny"})) as client:
        text = client.get("/v1/model").text
        info = json.loads(text)
    assert "model_path" not in info and info["model_file"] == "model.onnx"
    assert str(model_path.parent) not in text and not INTERNAL.search(text)


# ---------------------------------------------------------------------------
# Limits: aspect ratio, decode budget
# ---------------------------------------------------------------------------


def test_extreme_aspect_ratios_are_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client()  # default serve.max_aspect_ratio = 20
    for (w, h), status in {(1300, 1): 400, (1, 1300): 400, (21, 1): 400, (400, 20): 200, (20, 400): 200,
                           (1000, 60): 200}.items():
        r = client.post("/v1/predict", content=encode(scene(h, w), ".png"), headers={"Content-Type": "image/png"})
        assert r.status_code == status, (w, h, r.text)
        if status == 400:
            assert f"{w}x{h}" in r.json()["error"] and "20:1" in r.json()["error"]
            assert "serve.max_aspect_ratio" in r.json()["error"]
    assert errors(metric_samples(client.get("/metrics").text), "aspect_ratio") == 3
    wide = make_client(max_aspect_ratio=2000)
    r = wide.post("/v1/predict", content=encode(scene(1, 1300), ".png"), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (1300, 1)


def test_decode_budget_refuses_waits_and_releases(make_client: Callable[..., TestClient]) -> None:
    client = make_client(decode_memory_mb=4, decode_wait_s=0.5)
    big = encode(scene(500, 500), ".png")  # 250000 px * 14 B + 2 MiB = 5.5 MB > 4 MB
    r = client.post("/v1/predict", content=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and "4 MB" in r.json()["error"] and "500x500" in r.json()["error"]
    assert "serve.decode_memory_mb" in r.json()["error"]

    budget = client.app.state.budget
    with budget.reserve(budget.total - 1000, "test hog"):
        start = time.perf_counter()
        r = client.post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert time.perf_counter() - start >= 0.5 and "serve.decode_wait_s" in r.json()["error"]
    ok_request(client)
    assert budget.used == 0  # every reservation given back

    hog = budget.reserve(budget.total - 1000, "test hog")
    hog.__enter__()
    threading.Timer(0.2, hog.__exit__, (None, None, None)).start()  # freed while the request waits
    r = client.post("/v1/predict", content=VALID_JPG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and budget.used == 0
    m = metric_samples(client.get("/metrics").text)
    assert errors(m, "decode_memory") == 1 and errors(m, "decode_busy") == 1 and requests_with(m, 503) == 1


MEASURE = """
import sys
from cvops.serve.budget import decode_cost
from cvops.serve.decode import load_bgr, open_image

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

data, small = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
img, fmt = open_image(small, 10**9)
load_bgr(img, fmt, len(small))  # every code path warm
img, fmt = open_image(data, 10**9)
cost, mode = decode_cost(*img.size, img.mode), img.mode
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
bgr = load_bgr(img, fmt, len(data))
print(mode, cost, status("VmHWM") - base)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak RSS reset")
def test_decode_estimate_bounds_the_measured_peak(tmp_path: Path) -> None:
    """The budget's estimate is at least the peak memory a decode really takes (fresh process per mode)."""
    w, h = 3000, 2000
    big_rgb = scene(h, w)
    cases = {
        "rgb-jpeg": (encode(big_rgb), encode(scene(30, 40))),
        "gray16-png": (zero_png(w, h, 16, 0), zero_png(40, 30, 16, 0)),
        "rgba-png": (zero_png(w, h, 8, 6), zero_png(40, 30, 8, 6)),
        "cmyk-jpeg": (pil_bytes(Image.fromarray(big_rgb).convert("CMYK"), "JPEG"),
                      pil_bytes(Image.fromarray(scene(30, 40)).convert("CMYK"), "JPEG")),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, (data, small) in cases.items():
        (tmp_path / "big").write_bytes(data)
        (tmp_path / "small").write_bytes(small)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "big"), str(tmp_path / "small")],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        mode, cost, peak = out.stdout.split()
        assert int(cost) == decode_cost(w, h, mode)
        bgr_bytes = w * h * 3
        assert bgr_bytes < int(peak) <= int(cost), (name, mode, int(peak) / 2**20, int(cost) / 2**20)
        print(f"{name} ({mode}): measured peak {int(peak) / 2**20:.1f} MiB <= estimate {int(cost) / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------
# Starting the server
# ---------------------------------------------------------------------------


def test_off_loopback_without_a_token_is_refused(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cvops.config import ConfigError
    from cvops.serve.server import check_exposure, is_loopback, serve

    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "8.8.8.8", "192.168.1.10"):
        assert not is_loopback(host), host
    monkeypatch.delenv("CVOPS_TEST_UNSET_TOKEN", raising=False)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        serve(model_path, ServeConfig(host="0.0.0.0", port=free_port(), token_env="CVOPS_TEST_UNSET_TOKEN"))
    assert time.perf_counter() - start < 5  # refused before the model loads
    msg = str(e.value)
    assert "'0.0.0.0'" in msg and "$CVOPS_TEST_UNSET_TOKEN" in msg and "serve.allow_anonymous=true" in msg
    assert "serve.host=127.0.0.1" in msg
    check_exposure("0.0.0.0", None, "X", allow_anonymous=True)  # asked for: allowed
    check_exposure("0.0.0.0", "a-token", "X", allow_anonymous=False)  # with a token: allowed
    check_exposure("127.0.0.1", None, "X", allow_anonymous=False)  # loopback: allowed


def test_cvops_serve_refuses_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cvops serve`` / ``stages=[..., serve]`` (serve_export) refuse before the reference profile or the model."""
    import dataclasses

    from omegaconf import OmegaConf

    from cvops.config import ConfigError
    from cvops.schema import ServeConfig
    from cvops.serve.stage import serve_export

    monkeypatch.delenv("CVOPS_TEST_UNSET_TOKEN", raising=False)
    serve_cfg = dataclasses.asdict(ServeConfig(host="0.0.0.0", token_env="CVOPS_TEST_UNSET_TOKEN"))
    cfg = OmegaConf.create({"serve": serve_cfg, "monitor": {}})
    with pytest.raises(ConfigError, match="serve.allow_anonymous=true"):
        serve_export(cfg, "/nonexistent/store", export=None, curate=None, recipe=None)  # nothing else is touched


def test_serve_config_reaches_the_app() -> None:
    """One config object is handed down: no serve function restates a default the schema owns."""
    import inspect

    from cvops.schema import ServeConfig
    from cvops.serve.app import create_app
    from cvops.serve.server import build_app, serve

    fields = set(ServeConfig.__dataclass_fields__) - {"log_dir"}  # log_dir: the resolved folder, default None
    for fn in (serve, build_app, create_app):
        params = inspect.signature(fn).parameters
        assert params["cfg"].annotation in (ServeConfig, "ServeConfig"), fn.__name__
        assert not fields & set(params), f"{fn.__name__} re-declares {sorted(fields & set(params))}"


def test_python_multipart_is_not_a_vulnerable_version() -> None:
    from importlib.metadata import version

    installed = tuple(int(p) for p in re.findall(r"\d+", version("python-multipart"))[:3])
    assert installed >= (0, 0, 18), installed  # 0.0.9 - 0.0.17: CVE-2024-53981
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"python-multipart>=0.0.18"' in pyproject


# ---------------------------------------------------------------------------
# Fuzz: upload bodies
# ---------------------------------------------------------------------------

FUZZ_CASES = 1000
FUZZ_SEED = 20250610  # fixed: the same 1000 bodies on every run
BASE_JPG = encode(scene(40, 56, seed=1))
BASE_PNG = encode(scene(40, 56, seed=2), ".png")
BASE_PNG16 = pil_bytes(Image.fromarray(np.full((30, 20), 20000, np.uint16)))
CTYPES = ["image/jpeg", "image/png", "image/jpg", "image/pjpeg", "IMAGE/PNG", "image/png; charset=x", "",
          "application/octet-stream", "text/plain", "image/gif", "multipart/form-data", "application/json",
          "multipart/form-data; boundary=", "multipart/mixed; boundary=b"]


def _fix_png_crc(data: bytearray) -> None:
    """Recompute the IHDR CRC so PIL reaches the mutated fields instead of stopping at a checksum."""
    if len(data) >= 33 and data[12:16] == b"IHDR":
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)


def _sof_offset(data: bytes) -> int | None:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = data.find(marker, 2)
        if i >= 0 and i + 9 <= len(data):
            return i
    return None


def fuzz_strategies() -> Any:
    from hypothesis import strategies as st

    dims = st.one_of(st.sampled_from([0, 1, 2, 7, 65535, 2**16, 2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1))

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(st.sampled_from([BASE_JPG, BASE_PNG, BASE_PNG16])))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["truncate", "flip", "size", "ihdr", "splice", "insert"]))
            if op == "truncate":
                del data[draw(st.integers(0, len(data))):]
            elif op == "flip" and data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "size":
                w, h = draw(dims), draw(dims)
                if data[:4] == b"\x89PNG" and len(data) >= 33:
                    data[16:24] = struct.pack(">II", w, h)
                    if draw(st.booleans()):
                        _fix_png_crc(data)
                elif (sof := _sof_offset(bytes(data))) is not None:
                    data[sof + 5:sof + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
            elif op == "ihdr" and data[:4] == b"\x89PNG" and len(data) >= 33:
                data[draw(st.integers(24, 28))] = draw(st.integers(0, 255))  # depth, color type, methods
                _fix_png_crc(data)
            elif op == "splice" and data:
                i = draw(st.integers(0, len(data) - 1))
                junk = draw(st.binary(min_size=1, max_size=64))
                data[i:i + len(junk)] = junk
            elif op == "insert":
                data[draw(st.integers(0, len(data))):0] = draw(st.binary(max_size=64))
        return bytes(data)

    payloads = st.one_of(mutated(), mutated(), mutated(), st.sampled_from([BASE_JPG, BASE_PNG]),
                         st.binary(max_size=2048))  # mostly mutated images: they reach the decoder
    bchars = st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=";,\"\\")

    @st.composite
    def multipart(draw: Any) -> tuple[bytes, str]:
        boundary = draw(st.one_of(st.just("b0und"), st.text(bchars, min_size=1, max_size=80), st.just("-" * 71)))
        declared = boundary if draw(st.integers(0, 4)) else draw(st.text(bchars, min_size=0, max_size=20))
        nl = draw(st.sampled_from(["\r\n", "\n"])).encode()
        field = draw(st.sampled_from(["image", "photo", "", "IMAGE", "image\x00"]))
        filename = draw(st.sampled_from([None, "x.jpg", "", "../../etc/passwd", "a\rb"]))
        ptype = draw(st.sampled_from([None, "image/jpeg", "image/png", "application/octet-stream", "text/plain",
                                      "image/png; q=1", "x" * 300]))
        disp = f'form-data; name="{field}"' + ("" if filename is None else f'; filename="{filename}"')
        head = [f"Content-Disposition: {disp}".encode("latin-1", "replace")]
        if ptype is not None:
            head.append(f"Content-Type: {ptype}".encode())
        part = b"--" + boundary.encode() + nl + nl.join(head) + nl + nl + draw(payloads) + nl
        parts = part * draw(st.integers(1, 3))
        if draw(st.booleans()):
            parts = b"--" + boundary.encode() + nl + b'Content-Disposition: form-data; name="note"' + nl + nl + \
                    draw(st.binary(max_size=40)) + nl + parts
        body = parts + (b"--" + boundary.encode() + b"--" + nl if draw(st.booleans()) else b"")
        if draw(st.integers(0, 5)) == 0:  # cut anywhere
            body = body[: draw(st.integers(0, len(body)))]
        quoted = f'"{declared}"' if draw(st.booleans()) else declared
        return body, f"multipart/form-data; boundary={quoted}"

    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    image_types = st.sampled_from(["image/jpeg", "image/png"])
    raw = st.tuples(st.one_of(payloads, st.binary(max_size=4096)),
                    st.one_of(image_types, image_types, st.sampled_from(CTYPES), printable))
    return st.one_of(raw, raw, multipart())


def test_fuzz_upload_bodies(detector: OnnxDetector) -> None:
    """1000 generated bodies (fixed seed): never a 5xx, every 4xx a JSON error without internals, and the
    next valid request still 200."""
    from hypothesis import HealthCheck, given, seed, settings

    seen: dict[int, int] = {}
    with TestClient(create_app(detector, ServeConfig(max_pixels=2_000_000, max_upload_mb=1, max_batch=1), info=INFO, log=None)) as client:

        @seed(FUZZ_SEED)
        @settings(max_examples=FUZZ_CASES, database=None, deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
        @given(case=fuzz_strategies())
        def one(case: tuple[bytes, str]) -> None:
            body, ctype = case
            headers = {"Content-Type": ctype} if ctype else {}
            r = client.post("/v1/predict", content=body, headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (r.status_code, r.text, ctype, body[:64])
            assert r.headers["content-type"].startswith("application/json")
            if r.status_code == 200:
                assert isinstance(r.json()["detections"], list)
            else:
                assert r.status_code in (400, 413, 415), r.text
                assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str) and r.json()["error"]
                assert not INTERNAL.search(r.json()["error"]), r.json()
            ok_request(client)

        start = time.perf_counter()
        one()
        took = time.perf_counter() - start
        m = metric_samples(client.get("/metrics").text)
    total = sum(seen.values())
    print(f"fuzz: {total} cases in {took:.1f} s, statuses {dict(sorted(seen.items()))}")
    assert total >= FUZZ_CASES
    assert len(seen) >= 3 and seen.get(400, 0) > 100  # the bodies reach past the first check
    assert requests_with(m, 500) == 0 and errors(m, "internal") == 0


# ---------------------------------------------------------------------------
# Connections: head size and time, early answers, CPU bombs
# ---------------------------------------------------------------------------


def test_connections_are_bounded_in_head_size_and_time_and_closed_after_an_early_answer(model_path: Path,
                                                                                     tmp_path: Path) -> None:
    """An endless URL or header is cut at 64 KiB (400), a silent or slowloris connection is answered 408 and
    closed after serve.header_timeout_s, a 413 closes the connection the body still trickles into; a valid
    request is answered throughout."""
    import httpx

    server = Server(model_path, tmp_path, header_timeout_s=1.5, max_upload_mb=0.5, body_timeout_s=60)
    server.wait_ready()
    try:
        for head in (b"GET /healthz?x=", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: "):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(head)
            try:
                for _ in range(64):  # up to 4 MiB, never accepted whole
                    s.sendall(b"a" * 65536)
            except OSError:  # closed by the server mid-send: what it should do
                pass
            data, _ = _answer(s, 10)
            assert data == b"" or data.startswith(b"HTTP/1.1 400"), data[:200]
            s.close()
        silent = socket.create_connection(("127.0.0.1", server.port))
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\n")
        trickle = threading.Event()

        def drip() -> None:
            try:
                while not trickle.wait(0.3):
                    slow.sendall(b"X")
            except OSError:
                pass

        threading.Thread(target=drip, daemon=True).start()
        data, secs = _answer(silent, 15)
        assert data.startswith(b"HTTP/1.1 408") and 1.0 < secs < 8, (data[:100], secs)
        data, secs = _answer(slow, 15)
        trickle.set()
        assert data.startswith(b"HTTP/1.1 408") and secs < 8, (data[:100], secs)
        early = socket.create_connection(("127.0.0.1", server.port))
        early.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 900000\r\n\r\n" + b"x" * 1000)
        data, secs = _answer(early, 15)
        assert data.startswith(b"HTTP/1.1 413") and b"connection: close" in data.lower() and secs < 8, data[:300]
        r = httpx.post(f"{server.url}/v1/predict", content=encode(scene(64, 80, 3)),
                       headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        out = server.stop()
    assert "Traceback" not in out, out[-3000:]


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(make_client: Callable[..., TestClient]) -> None:
    """Each progressive scan walks the whole image again: a few MB of repeated scans held a core for minutes."""
    from cvops.media import MAX_JPEG_SCANS

    client = make_client()
    progressive = pil_bytes(Image.fromarray(scene(120, 160, 4)), "JPEG", progressive=True)
    r = client.post("/v1/predict", content=progressive, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    marks = b"\xff\xda" * (MAX_JPEG_SCANS + 1)  # as many start-of-scan markers (in a comment segment: cheap to build)
    bomb = progressive[:2] + b"\xff\xfe" + struct.pack(">H", len(marks) + 2) + marks + progressive[2:]
    r = client.post("/v1/predict", content=bomb, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400 and r.json()["error"].startswith("the JPEG image has"), r.text
    assert r.headers["connection"] == "close"


def test_bodies_in_flight_are_bounded_together(model_path: Path, tmp_path: Path) -> None:
    """Slow or parallel uploads share serve.upload_memory_mb: past it a request gets 503 at once (not the
    server growing with every connection); once the held body is answered, uploads are accepted again."""
    import httpx

    server = Server(model_path, tmp_path, upload_memory_mb=0.1, max_upload_mb=0.1, body_timeout_s=30)
    server.wait_ready()
    noisy = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    jpg = encode(noisy)
    assert 35_000 < len(jpg) < 100_000, len(jpg)
    try:
        held = socket.create_connection(("127.0.0.1", server.port))
        held.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\x00" * 70_000)  # 70 of 102 KB held, more to come
        time.sleep(1.0)
        r = httpx.post(f"{server.url}/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 503 and "serve.upload_memory_mb" in r.json()["error"], r.text
        assert r.headers["retry-after"] == "1"
        held.sendall(b"\x00" * 30_000)  # the rest: not an image, answered 400, its bytes given back
        data, _ = _answer(held, 15)
        assert data.startswith(b"HTTP/1.1 400"), data[:200]
        r = httpx.post(f"{server.url}/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        assert errors(server.metrics(), "upload_busy") == 1
    finally:
        server.stop()
