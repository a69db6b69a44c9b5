"""Does the served cut transfer to photos from another source? (issue 18)

    python bench/bench_transfer.py --work /work/bench-transfer --real ../shared/data/real-dev [--variant frozen]

Splits, each trained with `roadwork train` (`--variant default`: the shipped defaults, which
fine-tune the backbone in every fold; `--variant frozen`: the frozen-backbone probe, seconds per
fold) and scored on photos it never saw:
* loso: leave one real-dev source out (tracon, gtsdb, roadcone): train on the other sources, test on it;
* grouped: real-dev grouped 5-fold over its `group` column, one training run per fold;
* crossfit: one training run on all of real-dev; its own 5 grouped folds' out-of-fold margins, each
  fold cut by a rule fitted on the other four (what `train` estimates; five times cheaper than
  grouped, but each fold is scored by one fold model, not a served fold ensemble);
* synthetic: `synth --seed 11` to train, unseen drives of `--seed 12` to test.
Ambiguous real-dev rows are left out, as in the other real-dev benchmarks.

Every run keeps its out-of-fold margins (validation_predictions.csv); each cut rule below is then
refitted on them and applied to the held-out margins, so one training run scores every rule:
* current: the shipped rule (bootstrap-smoothed MCC cut, moved from margin 0 only at 90% confidence);
* zero: margin 0 with a fitted temperature;
* platt: logistic regression of the label on the margin (cut where it says 0.5);
* balanced: the same with both classes weighted equally (calibrated for the network's 50/50 stream);
* balanced-mcc: the cut of the best bootstrap-smoothed MCC with both classes weighted equally.
Held-out MCC is reported at the photos' own prevalence and reweighted to 50/50 ("bal."), the share
the validator sends. A rerun with the same --work reuses finished training runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import held_out_datasets, machine, subset_folder, today  # noqa: E402

from roadwork.config import load_config  # noqa: E402
from roadwork.data.sources import load_samples  # noqa: E402
from roadwork.data.splits import kfold_splits  # noqa: E402
from roadwork.serve.calibration import Calibration, candidate_cuts, fit_calibration  # noqa: E402
from roadwork.serve.predictor import Predictor  # noqa: E402
from roadwork.stats import bootstrap_mcc_curves, bootstrap_weights  # noqa: E402
from roadwork.train.run import train  # noqa: E402

VARIANTS = {"default": [], "frozen": ["backbone_training.mode=frozen", "model.type=probe"]}


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=2).astype(float)
    return np.where(labels == 1, len(labels) / (2 * counts[1]), len(labels) / (2 * counts[0]))


def platt(margins: np.ndarray, labels: np.ndarray, balanced: bool) -> Calibration:
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(
        margins[:, None], labels, sample_weight=balanced_weights(labels) if balanced else None)
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return Calibration(-intercept / slope, float(np.clip(1 / slope, 0.05, 20.0)))


def balanced_mcc(margins: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> Calibration:
    cuts = candidate_cuts(margins)
    weights = bootstrap_weights(len(margins), 200, np.random.default_rng(0), groups) * balanced_weights(labels)
    cut = float(cuts[int(np.argmax(bootstrap_mcc_curves(margins, labels, cuts, weights).mean(0)))])
    return Calibration(cut, platt(margins - cut, labels, balanced=True).temperature)


RULES = {
    "current": lambda m, y, g: fit_calibration(m, y, groups=g)[0],
    "zero": lambda m, y, g: Calibration(0.0, fit_calibration(m, y, confidence=2.0, groups=g)[0].temperature),
    "platt": lambda m, y, g: platt(m, y, balanced=False),
    "balanced": lambda m, y, g: platt(m, y, balanced=True),
    "balanced-mcc": balanced_mcc,
}


def splits(work: Path, real: Path) -> dict[str, tuple[Path, Path]]:
    with open(real / "metadata.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("ambiguous", "0") != "1"]
    result = {}
    for source in sorted({r["source"] for r in rows}):
        base = work / "loso" / source
        result[f"loso:{source}"] = (subset_folder(real, [r for r in rows if r["source"] != source], base / "train"),
                                    subset_folder(real, [r for r in rows if r["source"] == source], base / "test"))
    labels = [int(r["label"]) for r in rows]
    groups = np.unique([r["group"] for r in rows], return_inverse=True)[1]
    for k, (fit, held) in enumerate(kfold_splits(labels, groups, 5, seed=0)):
        base = work / "grouped" / f"fold{k}"
        result[f"grouped:{k}"] = (subset_folder(real, [rows[i] for i in fit], base / "train"),
                                  subset_folder(real, [rows[i] for i in held], base / "test"))
    result["crossfit"] = (subset_folder(real, rows, work / "all"), None)
    result["synthetic"] = held_out_datasets(work, real)["synthetic"]
    return result


def crossfit_folds(run_dir: Path) -> dict[str, dict]:
    """One pseudo-run per fold of a training run: the other folds' out-of-fold margins to fit a rule
    on, this fold's margins to score it on."""
    with open(run_dir / "validation_predictions.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["margin"]]
    estimate = json.loads((run_dir / "metrics.json").read_text())["validation"]["mcc"]
    result = {}
    for fold in sorted({r["fold"] for r in rows}, key=int):
        fit, held = [r for r in rows if r["fold"] != fold], [r for r in rows if r["fold"] == fold]
        result[f"crossfit:{fold}"] = {
            "oof_margin": [float(r["margin"]) for r in fit], "oof_label": [int(r["label"]) for r in fit],
            "oof_group": [r["group"] for r in fit], "held_margins": [[float(r["margin"])] for r in held],
            "held_label": [int(r["label"]) for r in held], "estimate": estimate}
    return result


def scored(train_data: Path, test_data: Path, out: Path, cache: Path, overrides: list[str]) -> dict:
    """Train (or reuse) one run; its out-of-fold and held-out margins and its own estimate."""
    saved = out / "margins.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    if not (out / "metrics.json").is_file():
        train(str(train_data), out, load_config(None, overrides), cache_dir=cache, progress=False)
    with open(out / "validation_predictions.csv", newline="") as handle:
        oof = [r for r in csv.DictReader(handle) if r["margin"]]
    predictor = Predictor.load(out / "bundle")
    samples = load_samples(str(test_data))
    margins, good, _ = predictor.sample_margins(samples, cache)
    margins = margins if margins.ndim == 2 else margins[:, None]
    result = {"oof_margin": [float(r["margin"]) for r in oof], "oof_label": [int(r["label"]) for r in oof],
              "oof_group": [r["group"] for r in oof], "held_margins": margins.tolist(),
              "held_label": [samples[i].label for i in good],
              "estimate": json.loads((out / "metrics.json").read_text())["validation"]["mcc"]}
    saved.write_text(json.dumps(result))
    return result


def held_out(run: dict, rule: str) -> tuple[np.ndarray, np.ndarray]:
    m, y = np.array(run["oof_margin"]), np.array(run["oof_label"])
    calibration = RULES[rule](m, y, np.unique(run["oof_group"], return_inverse=True)[1])
    return calibration(torch.tensor(run["held_margins"], dtype=torch.float64)).numpy(), np.array(run["held_label"])


def mccs(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    decided = (p > 0.5).astype(int)
    return (matthews_corrcoef(y, decided),
            matthews_corrcoef(y, decided, sample_weight=balanced_weights(y)) if len(np.unique(y)) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--only", choices=["loso", "grouped", "crossfit", "synthetic"], action="append")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; date: {today()}; command: python bench/bench_transfer.py --work {args.work} "
          f"--real {args.real} --variant {args.variant}", flush=True)
    runs: dict[str, dict] = {}
    for name, (train_data, test_data) in splits(args.work, args.real).items():
        if args.only and name.split(":")[0] not in args.only:
            continue
        out = args.work / "runs" / args.variant / name.replace(":", "-")
        if test_data is None:
            if not (out / "metrics.json").is_file():
                train(str(train_data), out, load_config(None, VARIANTS[args.variant]), cache_dir=args.work / "cache",
                      progress=False)
            runs |= crossfit_folds(out)
        else:
            runs[name] = scored(train_data, test_data, out, args.work / "cache", VARIANTS[args.variant])
        print(f"trained {name}", flush=True)
    header = " | ".join(f"{r} MCC / bal." for r in RULES)
    print(f"\n| split | n (pos.) | AUROC | estimate | {header} |\n|{'---|' * (4 + len(RULES))}")
    families: dict[str, list[str]] = {}
    for name, run in runs.items():
        families.setdefault(name.split(":")[0], []).append(name)
        y = np.array(run["held_label"])
        auroc = roc_auc_score(y, np.mean(run["held_margins"], axis=1)) if len(np.unique(y)) > 1 else float("nan")
        cells = [mccs(*held_out(run, rule)) for rule in RULES]
        print(f"| {name} | {len(y)} ({y.sum()}) | {auroc:.3f} | {run['estimate']:.3f} | "
              + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells) + " |")
    for family, names in families.items():
        if len(names) > 1:   # pooled over the held-out parts of one family
            pooled = {rule: [held_out(runs[n], rule) for n in names] for rule in RULES}
            cells = [mccs(np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]))
                     for parts in pooled.values()]
            gap = ("it is the estimate" if family == "crossfit" else
                   f"mean gap {np.mean([abs(runs[n]['estimate'] - mccs(*held_out(runs[n], 'current'))[0]) for n in names]):.3f}")
            print(f"| {family} pooled | | | {gap} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells)
                  + " |")


if __name__ == "__main__":
    main()
