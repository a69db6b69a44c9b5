"""The HTTP server: answers, hostile inputs, limits, overload, API key and metrics (in-process client)."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from roadwork.config import ConfigError, ServeConfig, from_options
from roadwork.data.sources import load_samples
from roadwork.serve.predictor import Predictor
from roadwork.serve.scorer import Prediction, Prepared, Scorer
from roadwork.serve.server import MicroBatcher, create_app


class _StandIn:
    """A stand-in scorer for the server: the Scorer's default request path over its own predict_images."""

    prepare_images = Scorer.prepare_images
    score_prepared = Scorer.score_prepared
    request_views = Scorer.request_views
    answers = Scorer.answers


@pytest.fixture(scope="module")
def served(probe_bundle):
    samples = load_samples(str(probe_bundle["data"]))
    return {"predictor": Predictor.load(probe_bundle["bundle"]), "good": samples[1].read_bytes(),
            "other": samples[2].read_bytes()}


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _hostile(good: bytes) -> dict[str, tuple[bytes, str, int]]:
    """name -> (body, content type, expected status)"""
    colour = Image.new("RGB", (64, 48), (200, 90, 20))
    frames = [Image.new("P", (64, 48), i) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    return {
        "empty body": (b"", "image/jpeg", 400),
        "not an image": (b"%PDF-1.4 not an image", "application/octet-stream", 400),
        "truncated JPEG": (good[: len(good) // 2], "image/jpeg", 400),
        "invalid base64": (b'{"image": "***not base64***"}', "application/json", 400),
        "JSON without image": (b'{"picture": "abc"}', "application/json", 400),
        "invalid JSON": (b'{"image": ', "application/json", 400),
        "decompression bomb": (_encoded(Image.new("1", (12_000, 12_000)), "PNG"), "image/png", 413),
        "1x1 image": (_encoded(Image.new("RGB", (1, 1)), "PNG"), "image/png", 400),
        "wrong content type": (good, "text/plain", 415),
        "CMYK": (_encoded(colour.convert("CMYK"), "JPEG"), "image/jpeg", 200),
        "16-bit PNG": (_encoded(Image.fromarray(np.full((48, 64), 40_000, dtype=np.uint16)), "PNG"), "image/png", 200),
        "animated GIF": (animated.getvalue(), "image/gif", 200),
        "huge but allowed": (_encoded(Image.new("RGB", (6000, 4000), (90, 90, 90)), "JPEG"), "image/jpeg", 200),
        "nested JSON": (b"[" * 100_000, "application/json", 400),
        "nested JSON image": (b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", 400),
    }


def test_hostile_inputs_get_a_clear_answer_and_the_server_keeps_serving(served):
    predictor, good = served["predictor"], served["good"]
    (expected,) = predictor.predict_images([good])
    with TestClient(create_app(predictor)) as client:
        for name, (body, content_type, status) in _hostile(good).items():
            response = client.post("/predict", content=body, headers={"content-type": content_type})
            assert response.status_code == status, (name, response.text)
            answer = response.json()
            if status == 200:
                assert 0.0 <= answer["probability"] <= 1.0, name
            else:
                assert answer["error"] and "Traceback" not in answer["error"], name
                assert not re.search("0x[0-9a-f]{6}", answer["error"]), name   # no Python object addresses
        response = client.post("/predict", content=good, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200
        assert response.json()["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert response.json()["roadwork"] == (expected.probability > 0.5)


def test_json_and_batch_requests_match_the_predictor(served):
    predictor, good, other = served["predictor"], served["good"], served["other"]
    expected = [p.probability for p in predictor.predict_images([good, other])]
    encoded = [base64.b64encode(b).decode() for b in (good, other)]
    with TestClient(create_app(predictor)) as client:
        single = client.post("/predict", json={"image": "data:image/jpeg;base64," + encoded[0]}).json()
        assert single["probability"] == pytest.approx(expected[0], abs=1e-6)
        batch = client.post("/predict/batch", json={"images": [encoded[0], "!!", encoded[1]]})
        assert batch.status_code == 200
        results = batch.json()["results"]
        assert [r.get("probability") for r in (results[0], results[2])] == pytest.approx(expected, abs=1e-6)
        assert "base64" in results[1]["error"]
        assert client.post("/predict/batch", content=good, headers={"content-type": "image/jpeg"}).status_code == 415
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["backbone"] == "efficientnet-lite0"
        assert client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/predict/batch", "/healthz"}


def test_limits_api_key_and_metrics(served):
    predictor, good = served["predictor"], served["good"]
    config = ServeConfig(max_body_bytes=len(good) - 1, max_batch_images=2, api_key="s3cret-key")
    with TestClient(create_app(predictor, config)) as client:
        headers = {"content-type": "image/jpeg", "x-api-key": "s3cret-key"}
        assert client.post("/predict", content=good, headers={"content-type": "image/jpeg"}).status_code == 401
        assert client.post("/predict", content=good, headers=headers).status_code == 413
        assert client.post("/predict/batch", json={"images": ["a", "b", "c"]},
                           headers={"x-api-key": "s3cret-key"}).status_code == 413
        assert client.get("/metrics").status_code == 401
        text = client.get("/metrics", headers={"x-api-key": "s3cret-key"}).text
        assert 'roadwork_requests_total{endpoint="predict",status="401"} 1.0' in text
        assert 'roadwork_requests_total{endpoint="predict",status="413"} 1.0' in text
        assert "roadwork_request_seconds_bucket" in text and "roadwork_queue_images" in text
    with pytest.raises(ConfigError, match="api_key"):
        from_options(ServeConfig, api_key="short")


def test_concurrent_requests_are_batched_and_overload_is_a_fast_503(served):
    predictor, good = served["predictor"], served["good"]
    release = threading.Event()
    calls: list[int] = []

    class Slow(_StandIn):   # holds the backbone until released, so requests pile up in the queue
        bundle = predictor.bundle

        def predict_images(self, images, names=None):
            release.wait(10)
            calls.append(len(images))
            return predictor.predict_images(images, names)

    app = create_app(Slow(), ServeConfig(max_batch_views=8, max_wait_ms=50, max_queue=4,
                                         max_batch_images=4))  # type: ignore[arg-type]
    with TestClient(app) as client:
        async def burst() -> list[int]:
            import httpx

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                async def one():
                    return (
                        await http.post("/predict", content=good, headers={"content-type": "image/jpeg"})
                    ).status_code

                tasks = [asyncio.create_task(one()) for _ in range(12)]
                await asyncio.sleep(0.5)
                release.set()
                return await asyncio.gather(*tasks)

        statuses = client.portal.call(burst)
    assert statuses.count(503) >= 1 and statuses.count(200) >= 4
    assert set(statuses) <= {200, 503}
    assert max(calls) > 1   # queued requests shared a backbone batch


def test_a_request_left_waiting_past_its_timeout_gets_504_and_the_server_recovers(served):
    predictor, good = served["predictor"], served["good"]
    release = threading.Event()

    class Stuck(_StandIn):
        bundle = predictor.bundle

        def predict_images(self, images, names=None):
            release.wait(10)
            return predictor.predict_images(images, names)

    with TestClient(create_app(Stuck(), ServeConfig(timeout_s=0.3))) as client:  # type: ignore[arg-type]
        response = client.post("/predict", content=good, headers={"content-type": "image/jpeg"})
        assert response.status_code == 504 and "0.3" in response.json()["error"]
        release.set()
        assert client.post("/predict", content=good, headers={"content-type": "image/jpeg"}).status_code == 200


def test_a_server_with_tta_answers_as_its_predictor_and_says_so(probe_bundle, served):
    from roadwork.config import TtaConfig

    predictor = Predictor.load(probe_bundle["bundle"])
    predictor.use_tta(TtaConfig(mode="foods", augmentations=4))
    with TestClient(create_app(predictor)) as client:
        assert client.get("/healthz").json()["tta"]["mode"] == "foods"
        answer = client.post("/predict", content=served["good"], headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200
    (expected,) = predictor.predict_images([served["good"]])
    assert answer.json()["probability"] == pytest.approx(expected.probability, abs=1e-6)


class _Held(_StandIn):
    """A predictor that holds the backbone until released and records every image it is given."""

    def __init__(self, predictor: Predictor) -> None:
        self.bundle, self.predictor = predictor.bundle, predictor
        self.release, self.seen = threading.Event(), []

    def predict_images(self, images, names=None):
        self.release.wait(10)
        self.seen.extend(images)
        return self.predictor.predict_images(images, names)


def test_a_batch_is_queued_whole_or_refused_whole(served):
    held, good = _Held(served["predictor"]), served["good"]
    encoded = base64.b64encode(good).decode()
    app = create_app(held, ServeConfig(max_batch_views=1, max_wait_ms=0, max_queue=4, max_batch_images=4))  # type: ignore[arg-type]
    with TestClient(app) as client:
        async def crowd() -> list[int]:
            import httpx

            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
                async def single():
                    return (
                        await http.post("/predict", content=good, headers={"content-type": "image/jpeg"})
                    ).status_code

                singles = [asyncio.create_task(single())]   # taken by the held backbone
                await asyncio.sleep(0.2)
                singles += [asyncio.create_task(single())]   # decoded, waiting for the backbone
                await asyncio.sleep(0.2)
                singles += [asyncio.create_task(single()) for _ in range(2)]   # 2 of 4 queue places
                await asyncio.sleep(0.2)
                batch = (await http.post("/predict/batch", json={"images": [encoded] * 3})).status_code
                held.release.set()
                return [batch, *await asyncio.gather(*singles)]

        statuses = client.portal.call(crowd)
    assert statuses == [503, 200, 200, 200, 200]
    assert len(held.seen) == 4   # none of the refused batch's images reached the backbone
    with pytest.raises(ConfigError, match="max_batch_images.*max_queue"):
        from_options(ServeConfig, max_queue=8, max_batch_images=16)


def test_the_pixel_budget_is_checked_from_the_header_before_any_work(served):
    held = _Held(served["predictor"])
    held.release.set()
    photo = _encoded(Image.new("RGB", (400, 300), (90, 90, 90)), "PNG")
    with TestClient(create_app(held, ServeConfig(max_pixels=100_000))) as client:  # type: ignore[arg-type]
        response = client.post("/predict", content=photo, headers={"content-type": "image/png"})
        assert response.status_code == 413 and "120000 pixels exceed the limit of 100000" in response.json()["error"]
        batch = client.post("/predict/batch", json={"images": [base64.b64encode(photo).decode(),
                                                               base64.b64encode(served["good"]).decode()]})
        results = batch.json()["results"]
        assert "exceed" in results[0]["error"] and 0 <= results[1]["probability"] <= 1
    assert held.seen == [served["good"]]


def test_a_client_that_leaves_mid_body_is_one_log_line_and_counted_apart(served, caplog):
    predictor, good = served["predictor"], served["good"]
    app = create_app(predictor)
    with TestClient(app) as client:
        async def leave() -> None:
            messages = iter([{"type": "http.request", "body": good[:100], "more_body": True},
                             {"type": "http.disconnect"}])

            async def receive():
                return next(messages)

            async def send(message):
                pass

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                     "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
                     "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(len(good)).encode())]}
            await app(scope, receive, send)

        with caplog.at_level("INFO", logger="roadwork.serve.server"):
            for _ in range(3):
                client.portal.call(leave)
        text = client.get("/metrics").text
    assert 'roadwork_requests_total{endpoint="predict",status="499"} 3.0' in text
    assert 'status="500"' not in text
    records = [r for r in caplog.records if r.name == "roadwork.serve.server"]
    assert len(records) == 3 and all(r.exc_info is None and "disconnected" in r.getMessage() for r in records)


def _histogram():
    from prometheus_client import CollectorRegistry, Histogram

    return Histogram("h", "h", registry=CollectorRegistry())


def test_batches_are_limited_in_views_and_decoding_overlaps_scoring():
    """Batches hold at most max_batch_views views (a photo larger than that goes alone); the next batch is
    decoded while the previous one is scored, and no more than one decoded batch waits."""
    events: list[tuple[str, list[bytes]]] = []
    scoring, second_decoded = threading.Event(), threading.Event()
    waiting = {"most": 0, "now": 0}
    lock = threading.Lock()

    def prepare(images: list[bytes]) -> Prepared:
        with lock:
            events.append(("prepare", images))
            waiting["now"] += 1
            waiting["most"] = max(waiting["most"], waiting["now"])
        if len(events) > 1 and scoring.is_set():
            second_decoded.set()
        return Prepared(images, ["image"] * len(images))

    def score(prepared: Prepared) -> list[Prediction]:
        scoring.set()
        second_decoded.wait(5)   # the first batch's scoring lasts until the next batch is decoded
        with lock:
            events.append(("score", prepared.images))
            waiting["now"] -= 1
        return [Prediction("image", probability=0.5) for _ in prepared.images]

    async def main() -> list[Prediction]:
        batcher = MicroBatcher(prepare, score, ServeConfig(max_batch_views=13, max_wait_ms=20, max_queue=64),
                               _histogram(), _histogram())
        worker = asyncio.create_task(batcher.run())
        sizes = [12, 1, 12, 1, 30, 1, 1, 1]
        futures = batcher.submit([(bytes([i]), views) for i, views in enumerate(sizes)])
        answers = await asyncio.wait_for(asyncio.gather(*futures), 10)
        worker.cancel()
        return answers

    answers = asyncio.run(main())
    assert len(answers) == 8 and all(a.probability == 0.5 for a in answers)
    batches = [[image[0] for image in images] for kind, images in events if kind == "prepare"]
    assert batches == [[0, 1], [2, 3], [4], [5, 6, 7]]   # 13 views at most; the 30-view photo alone
    assert second_decoded.is_set()   # batch 2 was decoded while batch 1 was being scored
    assert waiting["most"] <= 2   # one batch scored, one decoded (or being decoded) ahead of it


def test_a_photo_costs_the_views_its_plan_gives_it_through_every_source(served):
    from roadwork.data.views import plan_boxes

    predictor = served["predictor"]   # one frozen backbone, plan auto
    assert predictor.request_views(64, 48) == 1   # below 1.5x the input: the global view alone
    spec = predictor.bundle.backbone
    tiles = len(plan_boxes(spec.views, 1920, 1080, spec.input_size))
    assert tiles > 4 and predictor.request_views(1920, 1080) == tiles   # the global view, tiles and squares
    assert Scorer.request_views(predictor, 1920, 1080) == 1   # kinds that cannot tell count one per photo
