"""The serving application on a real exported model: predictions, limits, metrics, auth and the request log.

Everything runs for real: the tiny RTMDet exported to ONNX, ONNX Runtime, the
FastAPI app through Starlette's TestClient, and once a uvicorn server in a
subprocess reached over TCP.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.apps import app_args  # noqa: E402
from helpers.images import encode, pil_bytes, scene  # noqa: E402
from helpers.net import free_port, wait_for_http  # noqa: E402

from cvops.detector.runtime import OnnxDetector, Preprocess  # noqa: E402
from cvops.serve.app import create_app  # noqa: E402
from cvops.serve.decode import to_bgr  # noqa: E402
from cvops.requestlog import RequestLog, iter_log, log_files, read_log  # noqa: E402

INFO = {"fingerprint": "fp-test-123", "recipe": "tiny", "dataset_version": "tiny-0001"}
ROOT = Path(__file__).resolve().parent.parent
STATS = ("brightness", "contrast", "sharpness", "saturation", "aspect")


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture
def make_client(detector: OnnxDetector) -> Iterator[Callable[..., TestClient]]:
    """A factory of started TestClients over ``create_app(detector, **kwargs)``."""
    clients: list[TestClient] = []

    def make(**kwargs: Any) -> TestClient:
        client = TestClient(create_app(detector, **app_args(INFO, **kwargs)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)



def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit grayscale PNG of ``width x height`` (about 50 KB), built without holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    rows_per_block = 1000
    idat = b"".join(z.compress(row * min(rows_per_block, height - i)) for i in range(0, height, rows_per_block))
    idat += z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def check_detections(body: dict, width: int, height: int, classes: list[str]) -> None:
    assert body["width"] == width and body["height"] == height
    assert body["model"] == INFO["fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert body["latency_ms"] > 0
    dets = body["detections"]
    assert dets, "the random tiny model scores every anchor around 0.5: there must be detections"
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= width and 0 <= x2 <= width and 0 <= y1 <= height and 0 <= y2 <= height, d
        assert 0 <= d["score"] <= 1
        assert d["class"] == classes[d["label"]]


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def ok_request(client: TestClient, **headers: str) -> None:
    """A good request answered 200 (the server still serves)."""
    r = client.post("/v1/predict", content=encode(scene(48, 64, seed=9)),
                    headers={"Content-Type": "image/jpeg", **headers})
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 64


# ---------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------


def test_predict_png_matches_the_detector(make_client: Callable[..., TestClient], detector: OnnxDetector) -> None:
    client = make_client()
    img = scene(96, 160, seed=1)
    png = encode(img, ".png")
    expected = detector.predict([img])[0].to_json(detector.classes)
    multipart = client.post("/v1/predict", files={"image": ("x.png", png, "image/png")})
    raw = client.post("/v1/predict", content=png, headers={"Content-Type": "image/png"})
    for r in (multipart, raw):
        assert r.status_code == 200, r.text
        check_detections(r.json(), 160, 96, detector.classes)
        assert r.json()["detections"] == expected  # lossless: same pixels, same BGR order, same boxes
    assert multipart.json()["id"] != raw.json()["id"]


def test_predict_jpeg_multipart_and_raw(make_client: Callable[..., TestClient], detector: OnnxDetector) -> None:
    client = make_client()
    jpg = encode(scene(120, 90, seed=2))
    for r in (client.post("/v1/predict", files={"image": ("x.jpg", jpg, "image/jpeg")}),
              client.post("/v1/predict", files={"image": ("blob", jpg, "application/octet-stream")}),
              client.post("/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg"})):
        assert r.status_code == 200, r.text
        check_detections(r.json(), 90, 120, detector.classes)


def test_decoding_exif_gray_alpha_palette_16bit(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log", sample_rate=0.0)
    client = make_client(log=log)

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated by 90 degrees
    rotated = pil_bytes(Image.fromarray(scene(40, 80)[..., ::-1].copy()), "JPEG", exif=exif.tobytes())
    r = client.post("/v1/predict", content=rotated, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (40, 80)

    gray8 = pil_bytes(Image.fromarray(np.full((50, 70), 100, np.uint8)))
    gray16 = pil_bytes(Image.fromarray(np.full((50, 70), 100 * 257, np.uint16)))
    assert Image.open(io.BytesIO(gray16)).mode.startswith("I")
    rgb = np.zeros((50, 70, 3), np.uint8)
    rgb[...] = (200, 50, 10)
    rgba = np.dstack([rgb, np.zeros((50, 70), np.uint8)])  # fully transparent: alpha is dropped, not composited
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    for data in (gray8, gray16, pil_bytes(Image.fromarray(rgb)), pil_bytes(Image.fromarray(rgba, "RGBA")),
                 pil_bytes(palette), pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=100)):
        r = client.post("/v1/predict", files={"image": ("x", data, "image/png")})
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (70, 50)

    records, skipped = read_log(tmp_path / "log")
    assert skipped == 0 and [r["status"] for r in records] == [200] * 7
    g8, g16, color, alpha, pal, cmyk = records[1:]
    assert g8["brightness"] == pytest.approx(100, abs=0.5)
    assert g16["brightness"] == pytest.approx(g8["brightness"], abs=0.5)  # scaled to 8 bits, not clipped at 255
    assert g8["saturation"] == 0 and color["saturation"] > 100
    for other in (alpha, pal, cmyk):
        assert other["brightness"] == pytest.approx(color["brightness"], abs=3)
        assert other["saturation"] == pytest.approx(color["saturation"], abs=6)


def test_health_and_model_info(make_client: Callable[..., TestClient], detector: OnnxDetector) -> None:
    client = make_client(max_upload_mb=3, max_pixels=1234)
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert {k: info[k] for k in INFO} == INFO
    assert info["classes"] == list(detector.classes) == ["circle", "square", "triangle"]
    assert info["preprocess"] == detector.preprocess.to_dict()
    assert info["limits"] == {"max_upload_mb": 3, "max_pixels": 1234, "max_aspect_ratio": 20.0,
                              "decode_memory_mb": 1024.0, "body_timeout_s": 30.0}


# ---------------------------------------------------------------------------
# Metrics and drift
# ---------------------------------------------------------------------------


def test_metrics_and_drift_gauges(make_client: Callable[..., TestClient]) -> None:
    seen: list[int] = []

    def drift(records: list[dict]) -> dict[str, float]:
        seen.append(len(records))
        return {"drift_detected": True, "window": len(records),
                "brightness_mean": float(np.mean([r["brightness"] for r in records])), "note": "ignored"}

    client = make_client(drift=drift, window=4, drift_every=3)
    watch = client.app.state.drift
    before = metric_samples(client.get("/metrics").text)
    assert not [k for k in before if k[0] == "cvops_drift_detected"]  # no check yet: no verdict
    for i in range(6):
        r = client.post("/v1/predict", content=encode(scene(60, 80, seed=i)), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        watch.join(timeout=10)
    assert client.post("/v1/predict", content=b"GARBAGE" * 20, headers={"Content-Type": "image/png"}).status_code == 400
    assert client.post("/v1/predict", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 415
    assert seen == [3, 4]  # every 3 requests, the last (at most) 4

    m = metric_samples(client.get("/metrics").text)
    assert m[("cvops_requests_total", frozenset({("status", "200"), ("source", "default")}))] == 6
    assert m[("cvops_requests_total", frozenset({("status", "400"), ("source", "default")}))] == 1
    assert m[("cvops_requests_total", frozenset({("status", "415"), ("source", "default")}))] == 1
    assert m[("cvops_errors_total", frozenset({("reason", "bad_image")}))] == 1
    assert m[("cvops_errors_total", frozenset({("reason", "unsupported_media_type")}))] == 1
    assert m[("cvops_request_latency_seconds_count", frozenset({("source", "default")}))] == 6
    assert 0 < m[("cvops_request_latency_seconds_sum", frozenset({("source", "default")}))] < 6 * 2
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items() if k[0] == "cvops_request_latency_seconds_bucket")
    assert buckets[0][0] == 0.001 and buckets[-2][0] == 2.0 and buckets[-1] == (float("inf"), 6)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert m[("cvops_drift_detected", frozenset({("source", "default")}))] == 1
    assert m[("cvops_drift_feature", frozenset({("feature", "window"), ("source", "default")}))] == 4
    assert 40 < m[("cvops_drift_feature", frozenset({("feature", "brightness_mean"), ("source", "default")}))] < 220
    assert not [k for k in m if k[0] == "cvops_drift_feature" and ("feature", "note") in k[1]]
    assert m[("cvops_drift_checks_total", frozenset())] == 2


def test_each_source_has_its_own_series_and_drift_window_and_their_number_is_bounded(
        make_client: Callable[..., TestClient]) -> None:
    """X-Cvops-Source, ?source= and a multipart field name a request's source: each gets its own requests,
    latency and drift window; odd characters are cleaned; 10,000 distinct names (refused requests are the
    cheapest way to send them) stay within serve.max_sources series, the rest counted as 'other'."""
    windows: list[tuple[str, int]] = []

    def drift(records: list[dict]) -> dict[str, float]:
        windows.append((records[-1]["source"], len(records)))
        return {"drift_detected": records[-1]["source"] == "cam-b", "precision/all": 0.8, "reference/all": 0.9}

    client = make_client(drift=drift, window=4, drift_every=2, max_sources=4)
    jpg = encode(scene(60, 80, seed=1))
    for i in range(2):
        assert client.post("/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg",
                                                                 "X-Cvops-Source": "cam-a"}).status_code == 200
        client.app.state.drift.join(timeout=10)
        assert client.post("/v1/predict?source=cam-b", content=jpg,
                           headers={"Content-Type": "image/jpeg"}).status_code == 200
        client.app.state.drift.join(timeout=10)
    r = client.post("/v1/predict", files={"image": ("x.jpg", jpg, "image/jpeg")},
                    data={"source": "../../etc/passwd\n<script>"})
    assert r.status_code == 200
    assert sorted(windows) == [("cam-a", 2), ("cam-b", 2)]  # one window per source, checked on its own count
    m = metric_samples(client.get("/metrics").text)
    assert m[("cvops_drift_detected", frozenset({("source", "cam-b")}))] == 1
    assert m[("cvops_drift_detected", frozenset({("source", "cam-a")}))] == 0
    assert m[("cvops_estimated_precision", frozenset({("source", "cam-a"), ("class", "all")}))] == 0.8
    assert m[("cvops_reference_precision", frozenset({("class", "all")}))] == 0.9
    assert m[("cvops_request_latency_seconds_count", frozenset({("source", "cam-a")}))] == 2
    assert m[("cvops_requests_total", frozenset({("status", "200"), ("source", "../../etc/passwd__script")}))] == 1
    assert m[("cvops_model_info", frozenset({("project", "unknown"), ("model", INFO["fingerprint"])}))] == 1

    for i in range(10_000):  # empty bodies: refused (400) before any decoding
        client.post("/v1/predict", content=b"", headers={"Content-Type": "image/jpeg", "X-Cvops-Source": f"x{i}"})
    text = client.get("/metrics").text
    m = metric_samples(text)
    sources = {dict(k[1]).get("source") for k in m if "source" in dict(k[1])}
    assert len(sources) <= 5 and "other" in sources, sources  # 4 named + other
    assert m[("cvops_requests_total", frozenset({("status", "400"), ("source", "other")}))] == 10_000 - 1
    assert m[("cvops_sources_overflow_total", frozenset())] == 10_000 - 1
    assert len(text) < 60_000
    ok_request(client, **{"X-Cvops-Source": "cam-a"})  # the named ones still have their series


def test_failing_drift_check_is_counted_and_serving_goes_on(make_client: Callable[..., TestClient]) -> None:
    def broken(records: list[dict]) -> dict[str, float]:
        raise RuntimeError("no reference profile")

    client = make_client(drift=broken, window=2, drift_every=1)
    ok_request(client)
    client.app.state.drift.join(timeout=10)
    ok_request(client)
    client.app.state.drift.join(timeout=10)
    m = metric_samples(client.get("/metrics").text)
    assert m[("cvops_errors_total", frozenset({("reason", "drift_check")}))] == 2
    assert m[("cvops_requests_total", frozenset({("status", "200"), ("source", "default")}))] == 2


# ---------------------------------------------------------------------------
# Bad input: a 4xx JSON error, then the server still serves
# ---------------------------------------------------------------------------

JPG = encode(scene(64, 64, seed=3))
PNG = encode(scene(64, 64, seed=3), ".png")
BAD_INPUTS = {
    "garbage": (dict(content=b"GARBAGE" + os.urandom(2000), headers={"Content-Type": "image/jpeg"}),
                400, "not a JPEG or PNG"),
    "garbage-multipart": (dict(files={"image": ("x.jpg", b"\x00" * 500, "image/jpeg")}), 400, "not a JPEG or PNG"),
    "truncated-jpeg": (dict(content=JPG[: len(JPG) // 2], headers={"Content-Type": "image/jpeg"}), 400, "truncated"),
    "truncated-jpeg-header": (dict(content=JPG[:300], headers={"Content-Type": "image/jpeg"}), 400, "truncated"),
    "truncated-png": (dict(content=PNG[: len(PNG) // 2], headers={"Content-Type": "image/png"}), 400, "truncated"),
    "corrupt-png": (dict(content=PNG[:60] + bytes(len(PNG) - 60), headers={"Content-Type": "image/png"}),
                    400, "PNG"),
    "empty": (dict(content=b"", headers={"Content-Type": "image/jpeg"}), 400, "no image bytes"),
    "empty-multipart-file": (dict(files={"image": ("x.jpg", b"", "image/jpeg")}), 400, "no image bytes"),
    "wrong-type": (dict(content=JPG, headers={"Content-Type": "text/plain"}), 415, "text/plain"),
    "json": (dict(json={"image": "aGVsbG8="}), 415, "application/json"),
    "no-type": (dict(content=JPG), 415, "no Content-Type"),
    "multipart-text-part": (dict(files={"image": ("x.txt", JPG, "text/plain")}), 415, "text/plain"),
    "multipart-no-image-field": (dict(files={"photo": ("x.jpg", JPG, "image/jpeg")}), 400, "'image'"),
    "multipart-text-field": (dict(data={"image": "not a file"}, files={"other": ("x.jpg", JPG, "image/jpeg")}),
                             400, "'image'"),
    "broken-multipart": (dict(content=b"--nope\r\ngarbage", headers={"Content-Type": "multipart/form-data"}),
                         400, "multipart"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_serving_goes_on(make_client: Callable[..., TestClient], case: str) -> None:
    kwargs, status, fragment = BAD_INPUTS[case]
    client = make_client()
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"} and fragment in r.json()["error"], r.json()
    ok_request(client)


def test_oversize_upload_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.05)
    big = encode(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    assert len(big) > 0.05 * 2**20
    r = client.post("/v1/predict", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "0.05 MB" in r.json()["error"] and str(len(big)) in r.json()["error"]
    r = client.post("/v1/predict", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413
    ok_request(client)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is checked while reading
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    ok_request(client)


def test_too_many_pixels_is_refused_before_decoding(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_pixels=64 * 64 - 1)
    r = client.post("/v1/predict", content=JPG, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "64x64 = 4096 pixels" in r.json()["error"] and "4095" in r.json()["error"]
    r = client.post("/v1/predict", content=encode(scene(40, 60)), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200

    client = make_client()  # default max_pixels=40M
    bomb = huge_png()
    assert bomb[12:24] == b"IHDR" + struct.pack(">II", 20000, 20000) and len(bomb) < 100_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for send in (dict(content=bomb, headers={"Content-Type": "image/png"}),
                 dict(files={"image": ("bomb.png", bomb, "image/png")})):
        start = time.perf_counter()
        r = client.post("/v1/predict", **send)
        assert r.status_code == 413, r.text
        assert time.perf_counter() - start < 1.0
        assert "40000000 pixels" in r.json()["error"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100 * 1024  # KiB: 400M pixels never allocated
    ok_request(client)


def test_bearer_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(token="s3cret")
    assert client.get("/healthz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "s3cret"}):
        r = client.post("/v1/predict", content=JPG, headers={"Content-Type": "image/jpeg", **headers})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/v1/model", "/metrics", "/docs", "/nowhere"):
        assert client.get(path).status_code == 401, path
    ok_request(client, Authorization="Bearer s3cret")
    auth = {"Authorization": "bearer s3cret"}
    assert client.get("/v1/model", headers=auth).json()["fingerprint"] == INFO["fingerprint"]
    m = metric_samples(client.get("/metrics", headers=auth).text)
    assert m[("cvops_requests_total", frozenset({("status", "401"), ("source", "default")}))] == 4
    assert m[("cvops_requests_total", frozenset({("status", "200"), ("source", "default")}))] == 1
    assert m[("cvops_errors_total", frozenset({("reason", "unauthorized")}))] == 8
    r = client.get("/nowhere", headers=auth)
    assert r.status_code == 404 and "error" in r.json()


# ---------------------------------------------------------------------------
# The request log
# ---------------------------------------------------------------------------


def test_app_writes_the_request_log(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(log=RequestLog(tmp_path, sample_rate=1.0))
    jpg, png = encode(scene(70, 90, seed=4)), encode(scene(30, 50, seed=5), ".png")
    a = client.post("/v1/predict", files={"image": ("a.jpg", jpg, "image/jpeg")}).json()
    b = client.post("/v1/predict", content=png, headers={"Content-Type": "image/png"}).json()
    assert client.post("/v1/predict", content=JPG[:200], headers={"Content-Type": "image/jpeg"}).status_code == 400
    records, skipped = read_log(tmp_path)
    assert skipped == 0 and len(records) == 3
    ra, rb, bad = records
    for rec, resp, data, ctype in ((ra, a, jpg, "image/jpeg"), (rb, b, png, "image/png")):
        assert rec["id"] == resp["id"] and rec["status"] == 200 and rec["model"] == INFO["fingerprint"]
        assert rec["detections"] == resp["detections"] and rec["content_type"] == ctype
        assert (rec["width"], rec["height"]) == (resp["width"], resp["height"])
        assert rec["latency_ms"] > 0 and all(isinstance(rec[k], float) for k in STATS)
        kept = cv2.imread(str(tmp_path / rec["image_path"]))  # re-encoded from the decoded pixels
        sent = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert kept.shape == sent.shape and np.abs(kept.astype(int) - sent).mean() < 2
    assert ra["image_path"].endswith(".jpg") and rb["image_path"].endswith(".png")
    assert np.array_equal(cv2.imread(str(tmp_path / rb["image_path"])), cv2.imdecode(np.frombuffer(png, np.uint8), 1))
    assert rb["aspect"] == pytest.approx(50 / 30)
    assert bad["status"] == 400 and bad["error"] == "truncated_image" and "detections" not in bad
    assert "image_path" not in bad


def test_request_log_append_and_read(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "log", sample_rate=0.0)
    start = datetime.now().astimezone()
    ids = [log.append({"n": i, "x": np.float32(0.5), "v": np.arange(2), "bad": float("nan")}, image=JPG)
           for i in range(5)]
    assert log.append({"id": "mine", "n": 5}) == "mine"
    records, skipped = read_log(tmp_path / "log")
    assert skipped == 0 and [r["n"] for r in records] == list(range(6))
    assert [r["id"] for r in records] == ids + ["mine"] and len(set(ids)) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    for r in records:
        t = datetime.fromisoformat(r["time"])
        assert t.utcoffset() == timedelta(0) and abs(t - start) < timedelta(minutes=1)
    assert records[0]["x"] == 0.5 and records[0]["v"] == [0, 1] and records[0]["bad"] is None
    assert not any("image_path" in r for r in records) and not (tmp_path / "log" / "images").exists()
    assert read_log(tmp_path / "missing") == ([], 0)


def test_request_log_samples_images(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "all", sample_rate=1.0)
    jid, pid = log.append({"k": "j"}, image=JPG), log.append({"k": "p"}, image=PNG)
    log.append({"k": "none"})
    jpg_kept = cv2.imread(str(tmp_path / "all" / "images" / f"{jid}.jpg"))
    assert np.abs(jpg_kept.astype(int) - cv2.imdecode(np.frombuffer(JPG, np.uint8), 1)).mean() < 2
    assert np.array_equal(cv2.imread(str(tmp_path / "all" / "images" / f"{pid}.png")), scene(64, 64, seed=3))
    records, _ = read_log(tmp_path / "all")
    assert [r.get("image_path") for r in records] == [f"images/{jid}.jpg", f"images/{pid}.png", None]

    def sampled(directory: Path, seed: int) -> list[int]:
        log = RequestLog(directory, sample_rate=0.3, seed=seed)
        for i in range(200):
            log.append({"n": i}, image=JPG)
        return [r["n"] for r in read_log(directory)[0] if "image_path" in r]

    first = sampled(tmp_path / "s1", 7)
    assert 30 <= len(first) <= 90 and len(list((tmp_path / "s1" / "images").iterdir())) == len(first)
    assert sampled(tmp_path / "s2", 7) == first and sampled(tmp_path / "s3", 8) != first


def test_request_log_rotation(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=400, sample_rate=0.0)
    for i in range(30):
        log.append({"n": i, "pad": "x" * 20})
    files = log_files(tmp_path)
    assert len(files) >= 5 and files[-1].name == "requests.jsonl"
    assert all(re.fullmatch(r"requests\.\d{8}T\d{12}Z\.\d+\.jsonl", f.name) for f in files[:-1])
    assert all(f.stat().st_size <= 400 for f in files)
    records, skipped = read_log(tmp_path)
    assert skipped == 0 and [r["n"] for r in records] == list(range(30))


def test_request_log_cut_mid_line(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, sample_rate=0.0)
    for i in range(5):
        log.append({"n": i, "detections": [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9}]})
    log.close()
    path = tmp_path / "requests.jsonl"
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # a server killed mid-write
    records, skipped = read_log(tmp_path)
    assert [r["n"] for r in records] == [0, 1, 2, 3] and skipped == 1

    RequestLog(tmp_path).append({"n": 99})  # the restarted server does not glue its record onto the cut line
    records, skipped = read_log(tmp_path)
    assert [r["n"] for r in records] == [0, 1, 2, 3, 99] and skipped == 1


def test_request_log_is_thread_safe(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=3000, sample_rate=0.5)

    def writer(t: int) -> None:
        for i in range(40):
            log.append({"thread": t, "i": i, "pad": "y" * 30}, image=PNG)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    records, skipped = read_log(tmp_path)
    assert skipped == 0 and len(records) == 320 and len({r["id"] for r in records}) == 320
    for t in range(8):
        assert [r["i"] for r in records if r["thread"] == t] == list(range(40))
    assert len(log_files(tmp_path)) > 3
    assert len(list((tmp_path / "images").iterdir())) == sum("image_path" in r for r in records)


# ---------------------------------------------------------------------------
# A real server
# ---------------------------------------------------------------------------


def test_real_server_in_a_subprocess(model_path: Path, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    script = ("import sys\nfrom cvops.serve.server import serve\n"
              "from cvops.schema import ServeConfig\n"
              "cfg = ServeConfig(host='127.0.0.1', port=int(sys.argv[2]), sample_rate=0.0, max_upload_mb=5, "
              "max_pixels=10_000_000, token_env='CVOPS_TEST_SERVE_TOKEN')\n"
              "serve(sys.argv[1], cfg, info={'fingerprint': 'subprocess'}, log_dir=sys.argv[3])\n")
    out = tmp_path / "server.out"
    env = {**os.environ, "CVOPS_TEST_SERVE_TOKEN": "tok-42", "PYTHONPATH": str(ROOT)}
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-c", script, str(model_path), str(port), str(tmp_path / "log")],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(proc, f"{url}/healthz", out, timeout=60)
        auth = {"Authorization": "Bearer tok-42"}
        jpg = encode(scene(120, 160, seed=6))
        r = httpx.post(f"{url}/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg", **auth}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "subprocess" and (r.json()["width"], r.json()["height"]) == (160, 120)
        assert httpx.post(f"{url}/v1/predict", content=jpg, headers={"Content-Type": "image/jpeg"},
                          timeout=30).status_code == 401

        def one(i: int) -> int:
            return httpx.post(f"{url}/v1/predict", files={"image": ("x.jpg", jpg, "image/jpeg")}, headers=auth,
                              timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, range(4))) == [200] * 4
        metrics = metric_samples(httpx.get(f"{url}/metrics", headers=auth, timeout=10).text)
        assert metrics[("cvops_requests_total", frozenset({("status", "200"), ("source", "default")}))] == 5
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert f"cvops serve: {url}" in text and "curl" in text and "$CVOPS_TEST_SERVE_TOKEN" in text
    assert "tok-42" not in text
    records, skipped = read_log(tmp_path / "log")
    assert skipped == 0 and [r["status"] for r in records] == [200] * 5
    assert json.loads(json.dumps(records))  # plain JSON all the way


def test_workers_rebuild_the_app_from_the_same_serve_config(model_path: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers > 1``: each uvicorn worker calls ``app_from_env``, which unpickles the ServeConfig that
    ``serve`` wrote and builds the same app (limits, token from ``cfg.token_env``, request log)."""
    import uvicorn

    from cvops.schema import ServeConfig
    from cvops.serve.server import CONFIG_ENV, app_from_env, serve

    started: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: started.update(target=target, **kw))
    monkeypatch.setenv("CVOPS_TEST_WORKER_TOKEN", "w-tok")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    cfg = ServeConfig(port=free_port(), max_pixels=123_456, max_batch=1, token_env="CVOPS_TEST_WORKER_TOKEN")
    serve(model_path, cfg, info={"fingerprint": "workers"}, log_dir=tmp_path / "log", workers=2)
    assert started["target"] == "cvops.serve.server:app_from_env" and started["workers"] == 2
    pickled = Path(os.environ[CONFIG_ENV])
    try:
        with TestClient(app_from_env()) as client:
            assert client.get("/v1/model").status_code == 401
            auth = {"Authorization": "Bearer w-tok"}
            info = client.get("/v1/model", headers=auth).json()
            assert info["fingerprint"] == "workers" and info["limits"]["max_pixels"] == 123_456
            r = client.post("/v1/predict", content=encode(scene(48, 64, seed=2)),
                            headers={"Content-Type": "image/jpeg", **auth})
            assert r.status_code == 200, r.text
    finally:
        pickled.unlink()
    records, _ = read_log(tmp_path / "log")
    assert [r["status"] for r in records] == [200]


def test_micro_batcher_answers_each_caller_with_its_own_image(detector):
    """Concurrent requests batched into one inference get exactly the detections of their own image."""
    import threading

    from cvops.serve.batching import MicroBatcher

    det = detector
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (int(rng.integers(60, 140)), int(rng.integers(60, 140)), 3), dtype=np.uint8)
              for _ in range(12)]
    expected = [det.predict([im])[0] for im in images]
    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        return det.detect(items)

    batcher = MicroBatcher(run, max_batch=4, wait_ms=50)
    got = [None] * len(images)
    together = threading.Barrier(len(images))

    def call(i):
        item = det.preprocess.prepare(images[i])
        together.wait(timeout=30)
        got[i] = batcher.submit(item)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-5)
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-3)
    assert sum(sizes) == len(images) and max(sizes) > 1 and max(sizes) <= 4  # batched, never over max_batch


def test_micro_batcher_lanes_run_batches_side_by_side_and_all_stop(model_path: Path) -> None:
    """Two lanes on one one-thread session: two batches are in the session at once, every caller gets its own
    answer, and close() ends every lane once the queued items are answered."""
    import threading

    from cvops.serve.batching import MicroBatcher, lanes_for

    det = OnnxDetector(model_path, threads=1, spin=False)
    assert lanes_for(det, 2) == 2 and lanes_for(det, 0) == 1 and lanes_for(object(), 4) == 1  # no session: one
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(8)]
    expected = [det.predict([im])[0] for im in images]
    inside, most, lock = [0], [0], threading.Lock()
    both_in, met = threading.Barrier(2), threading.Event()

    def run(items):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        if not met.is_set():
            try:
                both_in.wait(timeout=5)  # the first two batches meet here: only possible on two lanes
            except threading.BrokenBarrierError:
                pass
            met.set()
        try:
            return det.detect(items)
        finally:
            with lock:
                inside[0] -= 1

    batcher = MicroBatcher(run, max_batch=2, wait_ms=1, lanes=2)
    got: list = [None] * len(images)
    with ThreadPoolExecutor(len(images)) as pool:
        for i, r in enumerate(pool.map(lambda i: batcher.submit(det.preprocess.prepare(images[i])), range(len(images)))):
            got[i] = r
    assert most[0] == 2
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-5)
    batcher.close()
    for t in batcher.threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in batcher.threads)


def test_unbatched_inference_is_bounded_by_the_lanes(model_path: Path) -> None:
    """serve.max_batch=1: 8 concurrent requests never run more than `lanes` inferences at once."""
    import threading

    from cvops.schema import ServeConfig
    from cvops.serve.metrics import ServeMetrics
    from cvops.serve.slots import Served

    det = OnnxDetector(model_path, threads=1, spin=False)
    served = Served(det, {"fingerprint": "fp"}, ServeConfig(max_batch=1, lanes=2), ServeMetrics())
    assert served.batcher is None and served.lanes == 2
    inside, most, lock = [0], [0], threading.Lock()
    network = served.run

    def counted(items):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        try:
            return network(items)
        finally:
            with lock:
                inside[0] -= 1

    served.run = counted
    item = det.preprocess.prepare(np.zeros((50, 60, 3), np.uint8))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: served.infer(item), range(8)))
    assert len(results) == 8 and most[0] == 2


def test_cores_are_split_between_workers_and_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    from cvops.config import ConfigError
    from cvops.schema import ServeConfig
    from cvops.serve import limits, server

    monkeypatch.setattr(server, "usable_cores", lambda: 8)
    assert server.plan_cores(0, 1) == (8, 1)  # auto: a lane per core, one thread each
    assert server.plan_cores(0, 2) == (4, 1)
    assert server.plan_cores(1, 1) == (1, 8)  # one lane with every core: the lowest single-request latency
    assert server.plan_cores(2, 2) == (2, 2)
    assert server.plan_cores(0, 16) == (1, 1)  # more workers than cores: never zero
    with pytest.raises(ConfigError, match="serve.lanes=-1"):
        limits.check(ServeConfig(lanes=-1))


@pytest.mark.parametrize("bad, says", [
    ({"lanes": -1}, "serve.lanes=-1"),
    ({"header_timeout_s": 0.0}, "serve.header_timeout_s=0.0"),
    ({"header_timeout_s": float("nan")}, "serve.header_timeout_s=nan"),
    ({"upload_memory_mb": 10.0, "max_upload_mb": 20.0}, "raise serve.upload_memory_mb or lower serve.max_upload_mb"),
])
def test_bad_serve_limits_are_refused_before_anything_loads(bad: dict, says: str, tmp_path: Path) -> None:
    """`cvops serve` (serve_export) and serve() name the key and the fix, before the store or the model is read."""
    import dataclasses

    from omegaconf import OmegaConf

    from cvops.config import ConfigError
    from cvops.schema import ServeConfig
    from cvops.serve.stage import serve_export
    from cvops.serve.server import serve

    cfg = OmegaConf.create({"serve": dataclasses.asdict(ServeConfig(**bad)), "monitor": {}})
    with pytest.raises(ConfigError, match=re.escape(says)):
        serve_export(cfg, "/nonexistent/store", export=None, curate=None, recipe=None)
    with pytest.raises(ConfigError, match=re.escape(says)):
        serve(tmp_path / "no-model.onnx", ServeConfig(**bad))


@pytest.mark.parametrize("key, bad", [
    ("port", 70000), ("lanes", -1), ("max_batch", 0), ("batch_wait_ms", -1.0), ("header_timeout_s", 0.0),
    ("body_timeout_s", float("nan")), ("max_upload_mb", 0.0), ("max_pixels", 0), ("max_aspect_ratio", 0.5),
    ("decode_memory_mb", float("inf")), ("decode_wait_s", -1.0), ("upload_memory_mb", -1.0),
    ("sample_rate", 1.5), ("log_max_mb", 0.0), ("log_max_days", -1.0), ("alias_poll_s", 0.0),
])
def test_every_serve_limit_is_checked_in_one_place(key: str, bad: object) -> None:
    """limits.check names the key and its value; create_app (a caller of the Python API) goes through it too."""
    from cvops.config import ConfigError
    from cvops.schema import ServeConfig
    from cvops.serve import limits

    limits.check(ServeConfig())  # the defaults pass
    cfg = ServeConfig(**{key: bad})
    with pytest.raises(ConfigError, match=re.escape(f"serve.{key}={bad}")):
        limits.check(cfg)
    with pytest.raises(ConfigError, match=re.escape(f"serve.{key}={bad}")):
        create_app(None, cfg, info={}, log=None)


# ---------------------------------------------------------------------------
# Preprocessing split, letterbox edge sizes
# ---------------------------------------------------------------------------


def test_prepare_then_detect_is_predict(detector: OnnxDetector) -> None:
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((60, 140), (128, 128), (300, 90))]
    whole = detector.predict(images)
    split = detector.detect([detector.preprocess.prepare(im) for im in images])
    for a, b in zip(whole, split):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.embedding, b.embedding)


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_preprocess_is_the_plain_letterbox_formula(order: str) -> None:
    """The per-plane fast path gives exactly (pixel - mean) / std in float32, padded, channels first."""
    import cv2

    mean, std, pad = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395], [114.0, 0.0, 7.5]
    pre = Preprocess(width=96, height=64, mean=mean, std=std, channel_order=order, pad_value=pad)
    rng = np.random.default_rng(5)
    for h, w in ((240, 320), (64, 96), (1, 700), (500, 3), (31, 17)):
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tensor, scale = pre(bgr)
        nw, nh = max(1, min(int(w * scale[0] + 0.5), 96)), max(1, min(int(h * scale[1] + 0.5), 64))
        img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else bgr
        img = img[..., ::-1] if order == "RGB" else img
        ref = np.empty((64, 96, 3), np.float32)
        ref[...] = np.asarray(pad, np.float32)
        ref[:nh, :nw] = img
        ref = (ref - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        assert tensor.dtype == np.float32 and tensor.flags.c_contiguous and tensor.shape == (3, 64, 96)
        assert np.array_equal(tensor, ref.transpose(2, 0, 1)), (h, w)


def test_to_bgr_reverses_the_channels_of_any_width() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (3, 1001, 3), dtype=np.uint8)
    for image in (Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA")):
        bgr = to_bgr(image)
        assert bgr.flags.c_contiguous and bgr.dtype == np.uint8 and np.array_equal(bgr, rgb[..., ::-1])


@pytest.mark.parametrize("h, w", [(1, 1300), (1300, 1), (1, 1), (2, 5000)])
def test_letterbox_never_computes_a_zero_side(detector: OnnxDetector, h: int, w: int) -> None:
    pre = detector.preprocess
    p = pre.prepare(np.full((h, w, 3), 128, np.uint8))
    assert p.tensor.shape == (3, pre.height, pre.width) and p.size == (w, h)
    assert all(s > 0 for s in p.scale)
    dets = detector.detect([p])[0]
    if len(dets.boxes):
        assert dets.boxes[:, 0::2].max() <= w and dets.boxes[:, 1::2].max() <= h


# ---------------------------------------------------------------------------
# The request log: retention, owner-only files, clean images, newest-first reading
# ---------------------------------------------------------------------------


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_request_log_retention_by_size(tmp_path: Path) -> None:
    budget_mb = 0.25
    log = RequestLog(tmp_path, sample_rate=1.0, max_total_mb=budget_mb, max_days=0)
    assert log.max_bytes == int(budget_mb * 2**20) // 4  # rotates at a quarter of the budget
    noisy = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)  # ~11 KB as PNG
    ids = []
    for i in range(120):
        ids.append(log.append({"n": i, "pad": "z" * 2000}, image=noisy, fmt="png"))
        assert dir_bytes(tmp_path) <= budget_mb * 2**20, i  # never over budget after an append
    assert len(list((tmp_path / "images").iterdir())) < 120  # images were deleted
    records, skipped = read_log(tmp_path)
    assert skipped == 0 and records[-1]["n"] == 119 and records[0]["n"] > 0  # oldest records gone, newest kept
    assert [r["n"] for r in records] == list(range(records[0]["n"], 120))  # a contiguous newest tail
    kept_images = {p.stem for p in (tmp_path / "images").iterdir()}
    assert ids[-1] in kept_images and ids[0] not in kept_images  # oldest images first
    assert (tmp_path / "requests.jsonl").is_file()


def test_request_log_retention_by_age(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=300, sample_rate=1.0, max_days=30)
    for i in range(12):
        log.append({"n": i, "pad": "x" * 40}, image=JPG)
    log.close()
    old = time.time() - 40 * 86400
    rotated = log_files(tmp_path)[:-1]
    assert len(rotated) >= 3
    for p in [*rotated[:2], *sorted((tmp_path / "images").iterdir())[:3]]:
        os.utime(p, (old, old))
    images_before = len(list((tmp_path / "images").iterdir()))
    RequestLog(tmp_path, max_bytes=300, max_days=30)  # retention at start
    assert log_files(tmp_path)[:-1] == rotated[2:]
    assert len(list((tmp_path / "images").iterdir())) == images_before - 3
    assert read_log(tmp_path)[0][-1]["n"] == 11

    os.utime(tmp_path / "requests.jsonl", (old, old))  # a current file last written 40 days ago
    RequestLog(tmp_path, max_days=30)
    assert not (tmp_path / "requests.jsonl").exists() and read_log(tmp_path)[0][-1]["n"] < 11
    assert RequestLog(tmp_path, max_days=0).retain()["deleted"] == 0  # 0: no age limit


def test_request_log_files_are_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    directory.mkdir(mode=0o755)
    (directory / "requests.jsonl").write_text('{"n": 0}\n')  # left by an older version, world-readable
    os.chmod(directory / "requests.jsonl", 0o644)
    old_umask = os.umask(0o022)
    try:
        log = RequestLog(directory, max_bytes=200, sample_rate=1.0)
        for i in range(6):
            log.append({"n": i, "pad": "p" * 50}, image=PNG)
    finally:
        os.umask(old_umask)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(directory) == 0o700 and mode(directory / "images") == 0o700
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert len(log_files(directory)) > 2 and (directory / ".requests.lock").is_file()
    assert files and all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}


def test_sampled_images_carry_no_metadata(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(log=RequestLog(tmp_path, sample_rate=1.0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees for display
    exif[0x010F] = "SecretCam"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 30.0)}  # GPS
    stored = scene(40, 80, seed=12)
    upload = pil_bytes(Image.fromarray(stored[..., ::-1].copy()), "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(upload)).getexif().get_ifd(0x8825)  # the upload has GPS
    body = client.post("/v1/predict", content=upload, headers={"Content-Type": "image/jpeg"}).json()
    assert (body["width"], body["height"]) == (40, 80)
    (record,), _ = read_log(tmp_path)
    kept_bytes = (tmp_path / record["image_path"]).read_bytes()
    assert b"SecretCam" not in kept_bytes and b"Exif" not in kept_bytes
    kept = Image.open(tmp_path / record["image_path"])
    assert not kept.getexif() and kept.size == (40, 80)  # no EXIF at all, in the orientation of the detections
    displayed = np.asarray(kept)[..., ::-1].astype(int)
    assert np.abs(displayed - np.rot90(stored, -1)).mean() < 6  # the pixels the model saw


def test_iter_log_streams_newest_first(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_bytes=400, sample_rate=0.0)
    for i in range(40):
        log.append({"n": i, "pad": "q" * 20})
    log.close()
    assert [r["n"] for r in iter_log(tmp_path)] == list(range(39, -1, -1))
    assert [r["n"] for r in iter_log(tmp_path, newest_first=False)] == list(range(40))
    files = log_files(tmp_path)
    files[0].write_bytes(b"not json\n" * 5)  # the oldest file, unreadable: never reached by a short read
    reader = iter_log(tmp_path)
    newest = []
    for rec in reader:
        newest.append(rec["n"])
        if len(newest) == 5:
            break
    assert newest == [39, 38, 37, 36, 35] and reader.skipped == 0
    reader = iter_log(tmp_path)
    assert len(list(reader)) < 40 and reader.skipped == 5  # a full read meets them
    with open(tmp_path / "requests.jsonl", "ab") as f:
        f.write(b'{"n": 40, "pad"')  # killed mid-write
    reader = iter_log(tmp_path)
    assert next(iter(reader))["n"] == 39 and reader.skipped == 1
    assert list(iter_log(tmp_path / "missing")) == []


def test_monitor_window_reads_only_the_newest_records(tmp_path: Path) -> None:
    from cvops.drift.profile import window_from_log

    log = RequestLog(tmp_path, max_bytes=1200, sample_rate=0.0)
    for i in range(30):
        log.append({"id": f"r{i}", "status": 200, "width": 64, "height": 48, "brightness": 100.0, "model": "m",
                    "detections": [{"box": [1, 2, 30, 40], "score": 0.8, "label": 1, "class": "square"}]})
    log.close()
    files = log_files(tmp_path)
    assert len(files) > 3
    files[0].write_bytes(b"garbage\n" * 3)
    seen, skipped = window_from_log(tmp_path, window=4, low=0.3, model="m")
    assert [s.name for s in seen] == ["r26", "r27", "r28", "r29"] and skipped == 0


def test_served_onnx_runtime_threads_do_not_spin(model_path):
    """The server's ONNX Runtime session does not spin idle threads (they would take the cores its request
    threads decode on); the export gate's sessions keep ONNX Runtime's default."""
    from cvops.serve.models import open_detector

    key = "session.intra_op.allow_spinning"
    served = open_detector(model_path).session.get_session_options()
    assert served.get_session_config_entry(key) == "0"
    default = OnnxDetector(model_path).session.get_session_options()
    with pytest.raises(Exception, match="does not have configuration"):  # unset: ONNX Runtime spins
        default.get_session_config_entry(key)
