"""Does test-time augmentation help (issue 11, plan component 19)? None, plain and FOODS on held-out photos.

    python bench/bench_tta.py --work bench/out --real ../shared/data/real-dev

On synthetic drives and real-dev (test photos from groups training never saw, as in
bench_evaluate.py), a probe and a multi-view head (configs/cpu.yaml, frozen features, 5 grouped
folds) are each scored by `roadwork evaluate` with `--tta none`, `plain` and `foods` over the plan's
16 transforms (FOODS at temperature 1, the plan's softmax(-distance), and at 10). Reported: MCC and
AUROC with 95% intervals, the paired MCC difference of each mode minus none (the same group
bootstrap resamples), the FOODS weights (how often the photo itself is the closest copy, the
effective number of copies 1 / sum(w^2)), and the request-path time per photo of each mode.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, held_out_main, run_measured  # noqa: E402
from roadwork.config import TtaConfig  # noqa: E402
from roadwork.data.augment import tta_transforms  # noqa: E402
from roadwork.data.groups import group_samples  # noqa: E402
from roadwork.data.sources import load_samples  # noqa: E402
from roadwork.evaluate.metrics import bootstrap_metrics, interval, paired_difference  # noqa: E402
from roadwork.features.extract import content_keys  # noqa: E402
from roadwork.serve.predictor import Predictor  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
HEADS = {"probe": "model.type=probe", "multi-view": "model.type=multiview"}
MODES = {"none": TtaConfig(), "plain": TtaConfig(mode="plain"), "foods": TtaConfig(mode="foods"),
         "foods T=10": TtaConfig(mode="foods", temperature=10.0)}
TIMED_PHOTOS = 10


def cli_options(config: TtaConfig) -> list[str]:
    return ["--tta", config.mode, "--tta-augmentations", str(config.augmentations), "--tta-keep", str(config.keep),
            "--tta-temperature", str(config.temperature)]


def train(data: Path, out: Path, cache: Path, head: str) -> Path:
    if not (out / "metrics.json").is_file():
        run_measured([*ROADWORK, "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                      "--config", str(CONFIG), "--folds", "5", "--backbone-training", "frozen", "--set", head])
    return out / "bundle"


def evaluate(bundle: Path, data: Path, out: Path, cache: Path, config: TtaConfig) -> np.ndarray:
    if not (out / "predictions.csv").is_file():
        run_measured([*ROADWORK, "evaluate", "--bundle", str(bundle), "--data", str(data), "--out", str(out),
                      "--cache-dir", str(cache), "--device", "cpu", *cli_options(config)])
    with open(out / "predictions.csv", newline="") as handle:
        return np.array([float(r["probability"]) for r in csv.DictReader(handle)])


def copy_distances(bundle: Path, data: Path, cache: Path) -> torch.Tensor:
    """Mahalanobis distance of each test-time copy of each photo ``[copies, photos]`` from the training
    features, averaged over the fold heads."""
    predictor = Predictor.load(bundle)
    predictor.use_tta(MODES["foods"])
    samples = load_samples(str(data))
    distances = []
    for transform in tta_transforms(16):
        features, _, _ = predictor.sample_features(samples, cache, transform=transform)
        _, fused = predictor._outputs(features, samples, fused=True)
        distances.append(torch.stack([d.distances(fused[:, k]) for k, d in enumerate(predictor._densities)]).mean(0))
    return torch.stack(distances)


def foods_weights(distances: torch.Tensor, config: TtaConfig) -> tuple[float, float]:
    """Share of photos whose closest copy is the photo itself, and the mean effective number of
    copies FOODS averages (from the fold-averaged distances)."""
    kept = int(np.ceil(config.keep * len(distances) - 1e-9))
    cutoff = distances.kthvalue(kept, dim=0, keepdim=True).values
    logits = (-distances / config.temperature).masked_fill(distances > cutoff, float("-inf"))
    weights = torch.softmax(logits, dim=0)
    return float((distances.argmin(0) == 0).float().mean()), float((1.0 / (weights ** 2).sum(0)).mean())


def request_ms(bundle: Path, data: Path, config: TtaConfig) -> float:
    """Median milliseconds per photo on the request path (one photo per call, nothing cached)."""
    predictor = Predictor.load(bundle)
    predictor.use_tta(config)
    predictor.warm_up()
    photos = [s.read_bytes() for s in load_samples(str(data))[:TIMED_PHOTOS]]
    times = []
    for photo in photos:
        start = time.perf_counter()
        predictor.predict_images([photo])
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def bench(name: str, train_data: Path, test: Path, work: Path, cache: Path) -> list[str]:
    samples = load_samples(str(test))
    labels = np.array([s.label for s in samples])
    groups = group_samples(samples, content_keys(samples)[0], None).ids   # as `evaluate` groups its resamples
    lines = [f"\n{name}: train {train_data}, test {test} ({len(samples)} photos, {int(labels.sum())} roadwork)\n",
             "| head | TTA | test MCC [95% CI] | AUROC | minus none: MCC [paired 95% CI] | photo itself closest | "
             "copies averaged | request ms/photo |", "|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for head, setting in HEADS.items():
        bundle = train(train_data, work / f"tta-{name}-{head}", cache, setting)
        folders = {mode: work / f"tta-{name}-{head}-{mode.replace(' ', '').replace('=', '')}" for mode in MODES}
        scored = [evaluate(bundle, test, folders[mode], cache, config) for mode, config in MODES.items()]
        reports = {mode: json.loads((folders[mode] / "metrics.json").read_text()) for mode in MODES}
        draws = bootstrap_metrics(scored, labels, groups, seed=0)
        distances = copy_distances(bundle, test, cache)
        medians = ", ".join(f"{t.name} {d:.1f}" for t, d in zip(tta_transforms(16), distances.median(1).values))
        notes.append(f"{head}: median distance of each copy from the training features: {medians}")
        for (mode, config), draw in zip(MODES.items(), draws):
            report = reports[mode]
            row = f"| {head} | {mode} | {report['mcc']:.3f} {interval(draw['mcc'])} | {report['auroc']:.3f} | "
            if mode == "none":
                row += "- | - | - "
            else:
                difference = paired_difference(draws[0], draw)
                row += f"{report['mcc'] - reports['none']['mcc']:+.3f} {difference['ci95']} | "
                row += ("{:.2f} | {:.1f} ".format(*foods_weights(distances, config))
                        if config.mode == "foods" else "- | - ")
            lines.append(row + f"| {request_ms(bundle, test, config):.0f} |")
    return lines + ["", *notes]


if __name__ == "__main__":
    held_out_main(__doc__, "bench_tta.py", bench)
