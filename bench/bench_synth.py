"""Synthetic scene speed on one core, and how far colour statistics alone get on the result.

    python bench/bench_synth.py --n 300

Renders N images in this process (one core: PIL and numpy run single-threaded here) and reports
CPU and wall milliseconds per image, then times `write_synthetic_dataset` (rendering with the
annotation masks, JPEG encoding, atomic writes and annotations.json), counts its annotations per
image, and reads its JPEGs back to cross-validate two colour-only logistic
regressions: on 8x8x8 RGB histograms and on the share of orange pixels. Both should sit far below
perfect; if they do not, a classifier can pass without seeing any work-zone object. Prints a
markdown row for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today  # noqa: E402
from roadwork.data.annotations import read_annotations  # noqa: E402
from roadwork.data.synth import render_scene, write_synthetic_dataset  # noqa: E402


def colour_features(image: Image.Image) -> tuple[np.ndarray, float]:
    pixels = np.asarray(image.convert("RGB"))
    bins = (pixels // 32).astype(np.int64)
    histogram = np.bincount((bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]).ravel(), minlength=512)
    hsv = np.asarray(image.convert("HSV")).astype(np.int64)
    orange = (hsv[..., 0] >= 8) & (hsv[..., 0] <= 30) & (hsv[..., 1] > 150) & (hsv[..., 2] > 120)
    return np.sqrt(histogram / histogram.sum()), math.log(float(orange.mean()) + 1e-4)


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
    return float(cross_val_score(model, features, labels, cv=5).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()

    cpu, wall = time.process_time(), time.perf_counter()
    for index in range(args.n):
        render_scene(np.random.default_rng([args.seed, index]), args.width, args.height, positive=bool(index % 2))
    render_cpu_ms = 1000 * (time.process_time() - cpu) / args.n
    render_wall_ms = 1000 * (time.perf_counter() - wall) / args.n

    with tempfile.TemporaryDirectory() as temporary:
        wall = time.perf_counter()
        folder = write_synthetic_dataset(Path(temporary) / "data", args.n, args.seed, args.width, args.height)
        write_wall_ms = 1000 * (time.perf_counter() - wall) / args.n
        lines = (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
        annotated = list(read_annotations(folder).values())
        roadwork = np.mean([sum(o.roadwork for o in a.objects) for a in annotated]) * 2   # half are positives
        lookalikes = np.mean([sum(not o.roadwork for o in a.objects) for a in annotated])
        histograms, orange, labels = [], [], []
        for line in lines:
            file_name, label = line.split(",")[:2]
            with Image.open(folder / file_name) as image:
                histogram, orange_share = colour_features(image)
            histograms.append(histogram)
            orange.append([orange_share])
            labels.append(int(label))
    y = np.asarray(labels)
    histogram_accuracy = cross_validated_accuracy(np.asarray(histograms), y)
    orange_accuracy = cross_validated_accuracy(np.asarray(orange), y)

    print(f"machine: {machine()}; date: {today()}")
    print("| images | size | render ms/img (CPU) | render ms/img (wall) | write ms/img (wall, incl. JPEG and "
          "annotations) | work-zone objects per positive | look-alikes per image | colour-histogram LR acc | "
          "orange-share LR acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.n} | {args.width}x{args.height} | {render_cpu_ms:.1f} | {render_wall_ms:.1f} | "
          f"{write_wall_ms:.1f} | {roadwork:.1f} | {lookalikes:.1f} | {histogram_accuracy:.3f} | "
          f"{orange_accuracy:.3f} |")


if __name__ == "__main__":
    main()
