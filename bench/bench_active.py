"""Active learning against random picks at equal labelling budgets (issue 11), simulated.

    python bench/bench_active.py --work bench/out --real ../shared/data/real-dev --seeds 0 1

A labelled start set (whole groups drawn at random) trains a probe (configs/cpu.yaml, frozen
features, 3 grouped folds, 30% of the groups inside each fold choose its checkpoint); each round
then adds BUDGET photos from the rest of the training data (the pool) and retrains: `roadwork
active` picks (labelled from the known labels, as a person would) or random picks. Every round's
bundle is scored on test photos from groups never used for training with `roadwork evaluate`.
Synthetic drives: train `synth --seed 11`, test `--seed 12` (as in bench_adapt.py); real-dev: the
grouped 70/30 split of bench_evaluate.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, held_out_datasets, machine, run_measured, subset_folder, today  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
TRAIN = ["--config", str(CONFIG), "--folds", "3", "--val-fraction", "0.3", "--backbone-training", "frozen",
         "--set", "model.type=probe"]


def read_rows(folder: Path) -> list[dict]:
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def start_set(rows: list[dict], size: int, seed: int) -> list[dict]:
    """Whole groups, drawn at random, until ``size`` photos of both classes."""
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    chosen: list[dict] = []
    for group in np.random.default_rng(seed).permutation(sorted(by_group)):
        chosen += by_group[group]
        if len(chosen) >= size and len({r["label"] for r in chosen}) == 2:
            return chosen
    raise ValueError("the data is too small for this start set")


def score(run: Path, test: Path, cache: Path) -> dict:
    report = run / "test-report"
    if not (report / "metrics.json").is_file():
        run_measured([*ROADWORK, "evaluate", "--bundle", str(run / "bundle"), "--data", str(test), "--out", str(report),
                      "--cache-dir", str(cache), "--resamples", "200"])
    return json.loads((report / "metrics.json").read_text())


def train(start: Path, added: list[Path], run: Path, cache: Path) -> None:
    if not (run / "metrics.json").is_file():
        extra = [a for folder in added for a in ("--add-data", str(folder))]
        run_measured([*ROADWORK, "train", "--data", str(start), *extra, "--out", str(run), "--cache-dir", str(cache),
                      *TRAIN])


def label(picks: Path, truth: dict[str, str]) -> None:
    rows = read_rows(picks)
    for row in rows:
        row["label"] = truth[row["source_file"]]
    with open(picks / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def simulate(name: str, source: Path, test: Path, work: Path, cache: Path, start_size: int, budget: int, rounds: int,
             seed: int) -> dict[str, list[dict]]:
    rows = read_rows(source)
    truth = {r["file_name"]: r["label"] for r in rows}
    start_rows = start_set(rows, start_size, seed)
    base = work / f"{name}-seed{seed}"
    start = subset_folder(source, start_rows, base / "start")
    train(start, [], base / "round0", cache)
    first = score(base / "round0", test, cache)
    curves: dict[str, list[dict]] = {}
    for strategy in ("active", "random"):
        used = {r["file_name"] for r in start_rows}
        added: list[Path] = []
        curve = [first]
        for round_ in range(1, rounds + 1):
            run, picks = base / f"{strategy}-round{round_}", base / f"{strategy}-picks{round_}"
            pool_rows = [r for r in rows if r["file_name"] not in used]
            if not (picks / "metadata.csv").is_file():
                if strategy == "active":
                    pool = subset_folder(source, pool_rows, base / f"pool{round_}-{strategy}")
                    previous = base / ("round0" if round_ == 1 else f"{strategy}-round{round_ - 1}")
                    run_measured([*ROADWORK, "active", "--bundle", str(previous / "bundle"), "--pool", str(pool),
                                  "--budget", str(budget), "--out", str(picks), "--cache-dir", str(cache)])
                    label(picks, truth)
                else:
                    drawn = np.random.default_rng([seed, round_]).choice(len(pool_rows), budget, replace=False)
                    subset_folder(source, [{**pool_rows[i], "source_file": pool_rows[i]["file_name"]}
                                           for i in sorted(drawn)], picks)
            used |= {r["source_file"] for r in read_rows(picks)}
            added.append(picks)
            train(start, added, run, cache)
            curve.append(score(run, test, cache))
        curves[strategy] = curve
    return curves


def table(name: str, curves: dict[int, dict[str, list[dict]]], start_size: int, budget: int) -> list[str]:
    rounds = len(next(iter(curves.values()))["active"])
    lines = [f"\n{name}: labelled photos against test MCC / AUROC (mean over seeds {sorted(curves)})\n",
             "| labelled (start + picks) | active MCC | random MCC | active AUROC | random AUROC |",
             "|---|---|---|---|---|"]
    for r in range(rounds):
        cells = []
        for metric in ("mcc", "auroc"):
            for strategy in ("active", "random"):
                cells.append(f"{np.mean([c[strategy][r][metric] for c in curves.values()]):.3f}")
        lines.append(f"| about {start_size} + {r * budget} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    datasets = held_out_datasets(args.work, args.real)
    settings = {"synthetic": (*datasets["synthetic"], 100, 40), "real-dev": (*datasets["real-dev"], 80, 30)}
    lines = [f"machine: {machine()}; date: {today()}; command: python bench/bench_active.py --work {args.work} "
             f"--real {args.real} --seeds {' '.join(map(str, args.seeds))} --rounds {args.rounds}"]
    for name, (source, test, start_size, budget) in settings.items():
        curves = {seed: simulate(name, source, test, args.work, cache, start_size, budget, args.rounds, seed)
                  for seed in args.seeds}
        lines += table(name, curves, start_size, budget)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
