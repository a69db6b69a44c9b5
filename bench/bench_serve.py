"""Serving latency and load (issue 8): `roadwork serve` over loopback HTTP against the network's reference
miner model, then concurrent clients until overload.

    python bench/bench_serve.py --work bench/out            # trains a small bundle if --bundle is not given
    python bench/bench_serve.py --work bench/out --bundle RUN/bundle
    python bench/bench_serve.py --work bench/out --load-only --max-batch-views 12 36 64 192

1. Single requests, one at a time: a 224x224 JPEG and a 1920x1080 JPEG through `roadwork serve`
   (`POST /predict`, raw bytes), beside the reference: a ViT-B/16 image classifier at 224 px (random
   weights) in a transformers `pipeline("image-classification")` on CPU, called in-process on a PIL image
   opened from the same bytes (no HTTP, which favours the reference). p50/p95 over --requests calls.
2. Load: C concurrent clients (threads, loopback only) sending the 1920x1080 JPEG, a bounded count each;
   throughput, p50/p95/p99 latency, error counts by status, peak server memory; once per
   --max-batch-views value (a server started with that batch limit), --load-only skipping part 1.
Output: Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, run_measured, today  # noqa: E402


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A street-like test photo: noise with a bright block (content does not change latency)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(60, 140, size=(height, width, 3), dtype=np.uint8)
    array[height // 2 : height // 2 + height // 5, width // 3 : width // 3 + width // 8] = (250, 120, 0)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    values = np.asarray(seconds) * 1000
    return tuple(float(np.percentile(values, q)) for q in (50, 95, 99))  # type: ignore[return-value]


def bundle_for(work: Path) -> Path:
    run = work / "serve-run"
    if not (run / "bundle" / "manifest.json").is_file():
        data = work / "serve-data"
        if not (data / "metadata.csv").is_file():
            run_measured([*ROADWORK, "synth", str(data), "--n", "200", "--seed", "21"])
        run_measured([*ROADWORK, "train", "--data", str(data), "--out", str(run), "--cache-dir", str(work / "cache"),
                      "--set", "backbone_training.mode=frozen", "--set", "model.type=probe"])
    return run / "bundle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_pipeline():
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(num_labels=2)).eval()   # ViT-B/16 at 224 px
    return pipeline("image-classification", model=model, image_processor=ViTImageProcessor(), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--per-client", type=int, default=12)
    parser.add_argument("--max-batch-views", type=int, nargs="+", default=[None])
    parser.add_argument("--load-only", action="store_true", help="skip the single-request comparison")
    args = parser.parse_args()
    bundle = args.bundle or bundle_for(args.work)
    print(f"{machine()}, {today()}, `python bench/bench_serve.py`; bundle {bundle}\n")
    for views in args.max_batch_views:
        measure(bundle, args, views)


def measure(bundle: Path, args: argparse.Namespace, views: int | None) -> None:
    images = {"224x224": jpeg(224, 224, 1), "1920x1080": jpeg(1920, 1080, 2)}
    port = free_port()
    limit = [] if views is None else ["--max-batch-views", str(views)]
    server = subprocess.Popen([*ROADWORK, "serve", "--bundle", str(bundle), "--port", str(port), "--max-queue", "64",
                               *limit], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(timeout=60)
        for _ in range(600):
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        print(f"server: --max-batch-views {views or 'default'}\n")
        if not args.load_only:
            single(client, url, images, args.requests)
        load(server, url, images["1920x1080"], args)
    finally:
        server.terminate()
        server.wait(30)


def single(client: httpx.Client, url: str, images: dict[str, bytes], requests: int) -> None:
    print("| image | roadwork serve p50 ms | p95 ms | reference ViT-B/16 pipeline p50 ms | p95 ms | speed-up (p50) |")
    print("|---|---|---|---|---|---|")
    reference = reference_pipeline()
    for name, body in images.items():
        ours, theirs = [], []
        for _ in range(3):   # warm-up
            client.post(f"{url}/predict", content=body, headers={"content-type": "image/jpeg"})
            reference(Image.open(io.BytesIO(body)))
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post(f"{url}/predict", content=body, headers={"content-type": "image/jpeg"})
            ours.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            started = time.perf_counter()
            reference(Image.open(io.BytesIO(body)))
            theirs.append(time.perf_counter() - started)
        (o50, o95, _), (t50, t95, _) = percentiles(ours), percentiles(theirs)
        print(f"| {name} | {o50:.0f} | {o95:.0f} | {t50:.0f} | {t95:.0f} | {t50 / o50:.1f}x |", flush=True)


def load(server: subprocess.Popen, url: str, body: bytes, args: argparse.Namespace) -> None:
    process = psutil.Process(server.pid)
    print("\n| concurrent clients | requests | throughput img/s | p50 ms | p95 ms | p99 ms | statuses "
          "| peak server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in args.clients:
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        peak = [process.memory_info().rss]
        lock = threading.Lock()

        def worker(lock: threading.Lock, latencies: list[float], statuses: Counter[int]) -> None:
            with httpx.Client(timeout=120) as own:
                for _ in range(args.per_client):
                    started = time.perf_counter()
                    response = own.post(f"{url}/predict", content=body, headers={"content-type": "image/jpeg"})
                    status = response.status_code
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        statuses[status] += 1

        threads = [threading.Thread(target=worker, args=(lock, latencies, statuses)) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak.append(process.memory_info().rss)
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        ok = statuses.get(200, 0)
        p50, p95, p99 = percentiles(latencies)
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
        print(f"| {clients} | {len(latencies)} | {ok / seconds:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {shown} | "
              f"{max(peak) / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
