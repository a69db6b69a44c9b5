"""PyTorch against onnxruntime on the CPU for one bundle (issue 8): per-request latency of the predictor.

    python bench/bench_onnx.py --bundle RUN/bundle --work bench/out

Exports the bundle (`roadwork export --format onnx`; a finished export in --work is reused), then times
the request path (`predict_images` of each runtime's scorer) on one
224x224 and one 1920x1080 JPEG, one request at a time, both runtimes in the same process, after warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import jpeg  # noqa: E402
from common import machine, today  # noqa: E402
from roadwork.serve.onnx import export_onnx  # noqa: E402
from roadwork.serve.scorer import load_scorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    if not (args.work / "onnx" / "manifest.json").is_file():
        export_onnx(args.bundle, args.work / "onnx")
    runtimes = {"PyTorch": load_scorer(args.bundle), "onnxruntime": load_scorer(args.work / "onnx")}
    print(f"{machine()}, {today()}, `python bench/bench_onnx.py`; bundle {args.bundle}\n")
    print("| image | PyTorch p50 ms | p95 ms | onnxruntime p50 ms | p95 ms | largest probability difference |")
    print("|---|---|---|---|---|---|")
    for name, body in {"224x224": jpeg(224, 224, 1), "1920x1080": jpeg(1920, 1080, 2)}.items():
        cells, answers = [], []
        for predictor in runtimes.values():
            for _ in range(3):
                predictor.predict_images([body])
            seconds = []
            for _ in range(args.requests):
                started = time.perf_counter()
                (answer,) = predictor.predict_images([body])
                seconds.append(time.perf_counter() - started)
            answers.append(answer.probability)
            cells += [f"{np.percentile(seconds, 50) * 1000:.0f}", f"{np.percentile(seconds, 95) * 1000:.0f}"]
        print(f"| {name} | {' | '.join(cells)} | {abs(answers[0] - answers[1]):.1e} |", flush=True)


if __name__ == "__main__":
    main()
