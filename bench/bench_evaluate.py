"""Calibration (temperature against isotonic) and the evaluation report on held-out photos (issue 10).

    python bench/bench_evaluate.py --work bench/out --real ../shared/data/real-dev

Two datasets, each split so that the test photos come from groups (drives) that training never saw:
synthetic drives (`synth --seed 11` to train, `--seed 12` to test, as in bench_adapt.py) and
real-dev (a seeded 70/30 split of its `group` column). On each, from configs/cpu.yaml with frozen
features and 5 grouped folds:

- probe, temperature calibration (the default);
- the same heads recalibrated with isotonic regression (`--resume` reuses the saved heads);
- the multi-view head, temperature calibration.

Reported: ECE before calibration and as served, Brier score, MCC, both on the out-of-fold estimate
(each fold calibrated on the others) and on the held-out test photos via `roadwork evaluate`, which
also writes the two side-by-side reports (probe vs isotonic probe; probe vs multi-view head).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, held_out_main, run_measured  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
BASE = ["--config", str(CONFIG), "--folds", "5", "--backbone-training", "frozen"]
RUNS = {"probe": ["--set", "model.type=probe"], "multi-view": ["--set", "model.type=multiview"]}


def train(data: Path, out: Path, cache: Path, extra: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        run_measured([*ROADWORK, "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                      *BASE, *extra])
    return json.loads((out / "metrics.json").read_text())


def recalibrated(trained: Path, out: Path, data: Path, cache: Path, extra: list[str]) -> dict:
    """The heads of ``trained``, served with isotonic calibration (only the calibration is refitted)."""
    if not (out / "metrics.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(trained, out, ignore=shutil.ignore_patterns("bundle", "metrics.json"))
        run_measured([*ROADWORK, "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                      *BASE, *extra, "--set", "validation.calibration=isotonic", "--resume"])
    return json.loads((out / "metrics.json").read_text())


def evaluate(bundles: list[Path], data: Path, out: Path, cache: Path) -> dict:
    if not (out / "metrics.json").is_file():
        args = [a for b in bundles for a in ("--bundle", str(b / "bundle"))]
        run_measured([*ROADWORK, "evaluate", *args, "--data", str(data), "--out", str(out), "--cache-dir", str(cache)])
    return json.loads((out / "metrics.json").read_text())


def row(name: str, validation: dict, test: dict) -> str:
    mcc = test["ci95"]["mcc"]
    return (
        f"| {name} | {validation['ece_uncalibrated']:.3f} | {validation['ece']:.3f} | {validation['brier']:.3f} | "
        f"{validation['mcc']:.3f} | {test['calibration']['ece_uncalibrated']:.3f} | {test['calibration']['ece']:.3f} | "
        f"{test['brier']:.3f} | {test['mcc']:.3f} [{mcc[0]:.2f}, {mcc[1]:.2f}] |"
    )


def bench(name: str, train_data: Path, test_data: Path, work: Path, cache: Path) -> list[str]:
    runs = {variant: train(train_data, work / f"{name}-{variant}", cache, extra) for variant, extra in RUNS.items()}
    runs["probe, isotonic"] = recalibrated(work / f"{name}-probe", work / f"{name}-probe-isotonic", train_data, cache,
                                           RUNS["probe"])
    calibration = evaluate([work / f"{name}-probe", work / f"{name}-probe-isotonic"], test_data,
                           work / f"{name}-report-calibration", cache)
    heads = evaluate([work / f"{name}-probe", work / f"{name}-multi-view"], test_data, work / f"{name}-report-heads",
                     cache)
    tests = {"probe": calibration, "probe, isotonic": calibration["compared"][0], "multi-view": heads["compared"][0]}
    lines = [f"\n{name}: train {train_data}, test {test_data} ({calibration['n']} photos, "
             f"{calibration['bootstrap']['groups']} groups)\n",
             "| variant | out-of-fold ECE before | ECE served | Brier | MCC | test ECE before | ECE served | Brier "
             "| MCC [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [row(v, runs[v]["validation"], tests[v]) for v in ("probe", "probe, isotonic", "multi-view")]
    difference = heads["comparisons"][0]
    lines.append(f"\nmulti-view minus probe on the test photos: MCC {difference['mcc_difference']:+.3f}, paired 95% "
                 f"interval [{difference['ci95'][0]:+.3f}, {difference['ci95'][1]:+.3f}], ahead in "
                 f"{difference['b_better_share']:.0%} of resamples")
    for model in (heads, heads["compared"][0]):
        reward = model["reward"]
        lines.append(f"{model['name']}: simulated reward {reward['mean']:.3f} (std {reward['std']:.3f}, "
                     f"5-95% {reward['p05']:.3f}-{reward['p95']:.3f})")
    return lines


if __name__ == "__main__":
    held_out_main(__doc__, "bench_evaluate.py", bench)
