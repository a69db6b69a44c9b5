"""``roadwork serve``: the HTTP front of a Scorer (FastAPI; run by uvicorn).

Concurrent requests are gathered into micro-batches (at most ``max_batch_views`` backbone views, counted
from each photo's header and the bundle's view plan, waiting at most ``max_wait_ms`` for company) so the
backbone sees one batch instead of many single images. Batches run as a two-stage pipeline: the next
batch is decoded into views on one thread while the model scores the current one on another, and no
more than one decoded batch waits, so memory stays bounded however many clients there are. The queue
is bounded: a request whose images do not all fit gets 503 at once, with none of them queued, instead
of memory growing, and a request that waits longer than ``timeout_s`` gets 504. Bodies are read up to
``max_body_bytes`` and photos up to ``max_pixels`` (from the header; 413 beyond). A bad image is a 4xx
with one clear message, and the server keeps serving; a client that leaves mid-request is logged in one
line and counted as 499. Metrics are Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from roadwork import __version__
from roadwork.config import ServeConfig
from roadwork.data.decode import ImageDecodeError, decode_base64, header_pixels, header_size
from roadwork.serve.scorer import Prediction, Prepared, Scorer

log = logging.getLogger(__name__)
RAW_TYPES = ("image/", "application/octet-stream")


class Overloaded(Exception):
    """The request queue has no room for all of a request's images."""


DISCONNECTED = 499   # nginx's "client closed request": no answer was wanted, and nothing failed here


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Waiting = tuple[bytes, int, "asyncio.Future[Prediction]"]   # an image, its backbone views, its answer


def _fail(batch: list[Waiting], error: Exception) -> None:
    log.exception("prediction failed")   # a bug must fail these requests, not the server
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)


class MicroBatcher:
    """Gathers images submitted concurrently into batches of at most ``max_batch_views`` views, decodes
    each (``prepare``) on one thread while the previous one is scored (``score``) on another."""

    def __init__(self, prepare: Callable[[list[bytes]], Prepared], score: Callable[[Prepared], list[Prediction]],
                 config: ServeConfig, batch_images: Histogram, batch_views: Histogram) -> None:
        self.prepare, self.score, self.config = prepare, score, config
        self.batch_images, self.batch_views = batch_images, batch_views
        self.queue: asyncio.Queue[Waiting] = asyncio.Queue(config.max_queue)
        self._next: Waiting | None = None   # taken from the queue, but it opens the next batch

    def submit(self, images: list[tuple[bytes, int]]) -> list[asyncio.Future[Prediction]]:
        """Queue all of a request's images (each with its view count) or none (no await between the
        check and the puts, so no other request can take the room meanwhile): a refused request costs
        the backbone nothing."""
        if self.queue.maxsize - self.queue.qsize() < len(images):
            raise Overloaded
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Prediction]] = [loop.create_future() for _ in images]
        for (image, views), future in zip(images, futures):
            self.queue.put_nowait((image, views, future))
        return futures

    async def _gather(self) -> list[Waiting]:
        """The next batch: the first waiting image, then others while they fit in ``max_batch_views``
        and ``max_wait_ms`` has not passed (an image larger than the limit goes alone)."""
        loop = asyncio.get_running_loop()
        batch = [self._next if self._next is not None else await self.queue.get()]
        self._next = None
        views = batch[0][1]
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while views < self.config.max_batch_views:
            try:
                item = (self.queue.get_nowait() if loop.time() >= deadline else
                        await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if views + item[1] > self.config.max_batch_views:
                self._next = item
                break
            batch.append(item)
            views += item[1]
        return [item for item in batch if not item[2].done()]   # timed-out callers left

    async def run(self) -> None:
        ready: asyncio.Queue[tuple[list[Waiting], Prepared]] = asyncio.Queue()
        ahead = asyncio.Semaphore(1)   # one batch decoded (or being decoded) ahead of the one being scored
        scorer = asyncio.create_task(self._score(ready, ahead))
        try:
            while True:
                await ahead.acquire()
                batch = await self._gather()
                if not batch:
                    ahead.release()
                    continue
                self.batch_images.observe(len(batch))
                self.batch_views.observe(sum(views for _, views, _ in batch))
                try:
                    prepared = await asyncio.to_thread(self.prepare, [image for image, _, _ in batch])
                except Exception as error:
                    _fail(batch, error)
                    ahead.release()
                    continue
                ready.put_nowait((batch, prepared))
        finally:
            scorer.cancel()

    async def _score(self, ready: asyncio.Queue[tuple[list[Waiting], Prepared]], ahead: asyncio.Semaphore) -> None:
        while True:
            batch, prepared = await ready.get()
            ahead.release()   # the next batch may be decoded while this one is scored
            try:
                results = await asyncio.to_thread(self.score, prepared)
            except Exception as error:
                _fail(batch, error)
                continue
            for (_, _, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "body is not valid JSON") from None
    except RecursionError:
        raise RequestError(400, "JSON body is nested too deeply") from None


def _within_budget(image: bytes, max_pixels: int, where: str) -> bytes:
    """Refuse a photo larger than the pixel budget from its header, before it costs a decode."""
    pixels = header_pixels(image)
    if pixels is not None and pixels > max_pixels:
        raise RequestError(413, f"{where}: {pixels} pixels exceed the limit of {max_pixels} per image")
    return image


def _base64_image(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a base64 string")
    try:
        return decode_base64(value)
    except ImageDecodeError as error:
        raise RequestError(400, f"{where}: {error}") from None


def _images(body: bytes, content_type: str, batch: bool, config: ServeConfig) -> list[bytes | RequestError]:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        payload = _json(body)
        key = "images" if batch else "image"
        if not isinstance(payload, dict) or key not in payload:
            raise RequestError(400, f'JSON body must be an object with "{key}"'
                               + (" (a list of base64 strings)" if batch else " (a base64 string)"))
        if not batch:
            return [_within_budget(_base64_image(payload["image"], "image"), config.max_pixels, "image")]
        images = payload["images"]
        if not isinstance(images, list) or not images:
            raise RequestError(400, '"images" must be a non-empty list of base64 strings')
        if len(images) > config.max_batch_images:
            raise RequestError(413, f"{len(images)} images exceed the limit of {config.max_batch_images} per request")
        decoded: list[bytes | RequestError] = []
        for i, value in enumerate(images):   # a bad entry fails alone, like a bad image
            try:
                decoded.append(_within_budget(_base64_image(value, f"images[{i}]"), config.max_pixels,
                                              f"images[{i}]"))
            except RequestError as error:
                decoded.append(error)
        return decoded
    if batch:
        raise RequestError(415, '/predict/batch takes JSON {"images": [base64, ...]}')
    if kind and not kind.startswith(RAW_TYPES):
        raise RequestError(415, f"content type {kind!r} is not accepted: send image bytes (image/* or "
                                "application/octet-stream) or JSON {\"image\": base64}")
    return [_within_budget(body, config.max_pixels, "image")]


def _answer(prediction: Prediction) -> dict[str, Any]:
    probability = prediction.probability
    return {"probability": probability, "roadwork": bool(probability > 0.5)} if probability is not None else \
        {"error": prediction.error}


def create_app(predictor: Scorer, config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    registry = CollectorRegistry()
    requests = Counter("roadwork_requests", "HTTP requests", ["endpoint", "status"], registry=registry)
    latency = Histogram("roadwork_request_seconds", "Request latency", ["endpoint"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
    batch_images = Histogram("roadwork_batch_images", "Images per backbone batch", registry=registry,
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    batch_views = Histogram("roadwork_batch_views", "Backbone views per batch", registry=registry,
                            buckets=(1, 4, 8, 16, 32, 64, 128, 256, 512))
    depth = Gauge("roadwork_queue_images", "Images waiting for the backbone", registry=registry)
    tiers = Gauge("roadwork_tier_answers", "Photos answered by each tier of a cascade", ["tier"], registry=registry)

    def scored(prepared: Prepared) -> list[Prediction]:
        results = predictor.score_prepared(prepared)
        for tier, count in predictor.answers().items():
            tiers.labels(tier).set(count)
        return results

    batcher = MicroBatcher(lambda images: predictor.prepare_images(images, ["image"] * len(images)),
                           scored, config, batch_images, batch_views)

    def with_views(image: bytes) -> tuple[bytes, int]:
        size = header_size(image)   # an unreadable header costs one view: the decoder will refuse it
        return image, 1 if size is None else predictor.request_views(*size)
    depth.set_function(batcher.queue.qsize)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="roadwork", version=__version__,
                  description="Calibrated P(roadwork) for street-level photos; `roadwork` is probability > 0.5.",
                  lifespan=lifespan)

    def authorised(request: Request) -> bool:
        given = request.headers.get("x-api-key", "")
        return config.api_key is None or hmac.compare_digest(given.encode(), config.api_key.encode())

    async def handle(request: Request, endpoint: str, batch: bool) -> Response:
        started = time.perf_counter()
        try:
            if not authorised(request):
                raise RequestError(401, "missing or wrong X-API-Key header")
            images = _images(await _body(request, config.max_body_bytes), request.headers.get("content-type", ""),
                             batch, config)
            futures = batcher.submit([with_views(image) for image in images if isinstance(image, bytes)])
            try:
                answered = iter(await asyncio.wait_for(asyncio.gather(*futures), config.timeout_s))
            except TimeoutError:
                raise RequestError(504, f"no answer within {config.timeout_s} s") from None
            results = [next(answered) if isinstance(image, bytes) else Prediction("image", error=str(image))
                       for image in images]
            if batch:
                status, content = 200, {"results": [_answer(r) for r in results]}
            else:
                content = _answer(results[0])
                status = 400 if "error" in content else 200
        except Overloaded:
            status, content = 503, {"error": "server overloaded: request queue full, retry later"}
        except RequestError as error:
            status, content = error.status, {"error": str(error)}
        except ClientDisconnect:   # the client left mid-body: one line, counted apart from server errors
            log.warning("%s: client disconnected before sending the whole request", endpoint)
            status, content = DISCONNECTED, {"error": "client disconnected"}
        except Exception:   # never a traceback to the client, never a dead server
            log.exception("request failed")
            status, content = 500, {"error": "internal error"}
        requests.labels(endpoint, str(status)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - started)
        return JSONResponse(content, status_code=status)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness, and which bundle answers."""
        return {"status": "ok", **predictor.describe()}

    @app.post("/predict", responses={200: {"description": '{"probability": p, "roadwork": bool}'}})
    async def predict(request: Request) -> Response:
        """One image: raw bytes (image/* or application/octet-stream) or JSON {"image": base64}."""
        return await handle(request, "predict", batch=False)

    @app.post("/predict/batch", responses={200: {"description": '{"results": [{"probability", "roadwork"} '
                                                               'or {"error"}, ...]}'}})
    async def predict_batch(request: Request) -> Response:
        """Several images: JSON {"images": [base64, ...]}; a bad image fails alone."""
        return await handle(request, "predict_batch", batch=True)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Request counts, latency and batch-size histograms, queue depth (Prometheus text format)."""
        if not authorised(request):
            return JSONResponse({"error": "missing or wrong X-API-Key header"}, status_code=401)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
