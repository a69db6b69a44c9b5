"""Does the served cut transfer to photos from another source? (issue 18)

    python bench/bench_transfer.py --work /work/bench-transfer --real ../shared/data/real-dev [--variant frozen]

Splits, each trained with `roadwork train` (`--variant default`: the shipped defaults, which
fine-tune the backbone in every fold; `--variant frozen`: the frozen-backbone probe, seconds per
fold; the recipe variants change one fine-tuning setting each; `folds` is the default re-run with
the current code and `refit` that run refit on every photo, `validation.serve=refit`) and scored on
photos it never saw:
* loso: leave one real-dev source out (tracon, gtsdb, roadcone): train on the other sources, test on it;
* grouped: real-dev grouped 5-fold over its `group` column, one training run per fold;
* crossfit: one training run on all of real-dev; its own 5 grouped folds' out-of-fold margins, each
  fold cut by a rule fitted on the other four (what `train` estimates; five times cheaper than
  grouped, but each fold is scored by one fold model, not a served fold ensemble);
* synthetic: `synth --seed 11` to train, unseen drives of `--seed 12` to test.
Ambiguous real-dev rows are left out, as in the other real-dev benchmarks.

Every run keeps its out-of-fold margins (validation_predictions.csv); each cut rule below is then
refitted on them and applied to the held-out margins, so one training run scores every rule:
* old (0.9): the rule shipped until issue 18 (bootstrap-smoothed MCC cut, moved from margin 0 when it
  wins in 90% of group-bootstrap resamples);
* new (1.0): the same, moved only when it wins in every resample (`validation.cut_confidence` now);
* zero: margin 0 with a fitted temperature;
* fold-consistent: the old rule, but the cut leaves margin 0 only if no fold's MCC gets worse;
* platt: logistic regression of the label on the margin (cut where it says 0.5);
* balanced: the same with both classes weighted equally (calibrated for the network's 50/50 stream);
* balanced-mcc: the cut of the best bootstrap-smoothed MCC with both classes weighted equally.
Held-out MCC is reported at the photos' own prevalence and reweighted to 50/50 ("bal."), the share
the validator sends. "mean gap" is the mean |estimate - held-out MCC| under the old / new rule (the
estimate refitted from the out-of-fold margins as `train` would with that rule); "best cut in
hindsight" is the held-out MCC of the best cut chosen on the held-out photos themselves (the mean
member margin of a fold ensemble): what no rule can beat. A rerun with the same --work reuses
finished training runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
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
from roadwork.serve.scorer import load_scorer  # noqa: E402
from roadwork.stats import bootstrap_mcc_curves, bootstrap_weights  # noqa: E402
from roadwork.train.run import train  # noqa: E402

VARIANTS = {
    "default": [],
    "frozen": ["backbone_training.mode=frozen", "model.type=probe"],
    # the fine-tuning recipe, one change from the default each (issue 18's recipe study)
    "light-augment": ["backbone_training.augment=light"],
    "no-smoothing": ["backbone_training.label_smoothing=0"],
    "short": ["backbone_training.epochs=6"],
    "wide-crops": ["backbone_training.crop_scale=[0.6,1.0]"],
    "global-view": ["data.views=global"],
    # issue 21: the shipped default re-run with this code (a fold ensemble served), and the same run
    # refit on every photo (it reuses the folds run's fine-tunings and heads, then fits once more)
    "folds": [],
    "refit": ["validation.serve=refit"],
    "frozen-refit": ["backbone_training.mode=frozen", "model.type=probe", "validation.serve=refit"],
}
REUSES = {"refit": "folds", "frozen-refit": "frozen"}


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


def fold_consistent(margins: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: np.ndarray) -> Calibration:
    """The old rule (0.9), but the cut leaves margin 0 only if no fold's MCC gets worse there: each
    fold's margins come from its own model and drives, so a move that helps the pool but hurts one
    fold is a property of some drives or sources, not of the model."""
    calibration = fit_calibration(margins, labels, confidence=0.9, groups=groups)[0]
    cut = calibration.margin_threshold
    for fold in np.unique(folds):
        rows = folds == fold
        if matthews_corrcoef(labels[rows], margins[rows] > cut) < matthews_corrcoef(labels[rows], margins[rows] > 0):
            return RULES["zero"](margins, labels, groups, folds)
    return calibration


RULES = {
    "old (0.9)": lambda m, y, g, f: fit_calibration(m, y, confidence=0.9, groups=g)[0],
    "zero": lambda m, y, g, f: Calibration(0.0, fit_calibration(m, y, confidence=2.0, groups=g)[0].temperature),
    "new (1.0)": lambda m, y, g, f: fit_calibration(m, y, confidence=1.0, groups=g)[0],
    "fold-consistent": fold_consistent,
    "platt": lambda m, y, g, f: platt(m, y, balanced=False),
    "balanced": lambda m, y, g, f: platt(m, y, balanced=True),
    "balanced-mcc": lambda m, y, g, f: balanced_mcc(m, y, g),
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
    run = {k: np.array(v) if k != "estimate" else v for k, v in out_of_fold(run_dir).items()}
    result = {}
    for fold in np.unique(run["oof_fold"]):
        fit, held = run["oof_fold"] != fold, run["oof_fold"] == fold
        result[f"crossfit:{fold}"] = {
            **{k: run[k][fit].tolist() for k in ("oof_margin", "oof_label", "oof_group", "oof_fold")},
            "held_margins": run["oof_margin"][held][:, None].tolist(), "held_label": run["oof_label"][held].tolist(),
            "estimate": run["estimate"]}
    return result


def scored(train_data: Path, test_data: Path, out: Path, cache: Path, overrides: list[str]) -> dict:
    """Train (or reuse) one run; its out-of-fold and held-out margins and its own estimate."""
    if not (out / "metrics.json").is_file():
        train(str(train_data), out, load_config(None, overrides), cache_dir=cache, progress=False,
              resume=(out / "splits").is_dir())
    saved = out / "held-out.json"
    if not saved.is_file():
        predictor = load_scorer(out / "bundle")
        samples = load_samples(str(test_data))
        margins, good, _ = predictor.sample_margins(samples, cache)
        margins = margins if margins.ndim == 2 else margins[:, None]
        saved.write_text(json.dumps({"held_margins": margins.tolist(), "held_label": [samples[i].label for i in good]}))
    return out_of_fold(out) | json.loads(saved.read_text())


def out_of_fold(run_dir: Path) -> dict:
    """A run's out-of-fold margins, labels, groups and folds, and its own estimate."""
    with open(run_dir / "validation_predictions.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["margin"]]
    return {"oof_margin": [float(r["margin"]) for r in rows], "oof_label": [int(r["label"]) for r in rows],
            "oof_group": [r["group"] for r in rows], "oof_fold": [int(r.get("fold") or 0) for r in rows],
            "estimate": json.loads((run_dir / "metrics.json").read_text())["validation"]["mcc"]}


def held_out(run: dict, rule: str) -> tuple[np.ndarray, np.ndarray]:
    m, y, f = np.array(run["oof_margin"]), np.array(run["oof_label"]), np.array(run["oof_fold"])
    calibration = RULES[rule](m, y, np.unique(run["oof_group"], return_inverse=True)[1], f)
    return calibration(torch.tensor(run["held_margins"], dtype=torch.float64)).numpy(), np.array(run["held_label"])


def estimate(run: dict, rule: str) -> float:
    """What `train` would estimate with this rule: each fold's out-of-fold margins cut by the rule
    fitted on the other folds, pooled."""
    m, y, f = np.array(run["oof_margin"]), np.array(run["oof_label"]), np.array(run["oof_fold"])
    g = np.unique(run["oof_group"], return_inverse=True)[1]
    decided = np.zeros(len(m), dtype=bool)
    for fold in np.unique(f):
        calibration = RULES[rule](m[f != fold], y[f != fold], g[f != fold], f[f != fold])
        decided[f == fold] = calibration(torch.tensor(m[f == fold], dtype=torch.float64)).numpy() > 0.5
    return matthews_corrcoef(y, decided)


def mccs(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    decided = (p > 0.5).astype(int)
    return (matthews_corrcoef(y, decided),
            matthews_corrcoef(y, decided, sample_weight=balanced_weights(y)) if len(np.unique(y)) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    parser.add_argument("--only", action="append",
                        help="a family (loso, grouped, crossfit, synthetic) or one split (loso:tracon); repeatable")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; date: {today()}; command: python bench/bench_transfer.py --work {args.work} "
          f"--real {args.real} --variant {args.variant}", flush=True)
    runs: dict[str, dict] = {}
    for name, (train_data, test_data) in splits(args.work, args.real).items():
        if args.only and name.split(":")[0] not in args.only and name not in args.only:
            continue
        out = args.work / "runs" / args.variant / name.replace(":", "-")
        reused = args.work / "runs" / REUSES.get(args.variant, args.variant) / name.replace(":", "-")
        if reused != out and (reused / "metrics.json").is_file() and not out.exists():
            for part in ("splits", "decoded"):   # the folds' work, which --resume then keeps
                if (reused / part).is_dir():
                    shutil.copytree(reused / part, out / part)
        if test_data is None:
            if not (out / "metrics.json").is_file():
                train(str(train_data), out, load_config(None, VARIANTS[args.variant]), cache_dir=args.work / "cache",
                      progress=False)
            runs |= crossfit_folds(out)
        else:
            runs[name] = scored(train_data, test_data, out, args.work / "cache", VARIANTS[args.variant])
        print(f"trained {name}", flush=True)
    header = " | ".join(f"{r} MCC / bal." for r in RULES)
    print(f"\n| split | n (pos.) | AUROC | estimate | best cut in hindsight (margin: MCC) | {header} |\n"
          f"|{'---|' * (5 + len(RULES))}")
    families: dict[str, list[str]] = {}
    for name, run in runs.items():
        families.setdefault(name.split(":")[0], []).append(name)
        y = np.array(run["held_label"])
        auroc = roc_auc_score(y, np.mean(run["held_margins"], axis=1)) if len(np.unique(y)) > 1 else float("nan")
        cells = [mccs(*held_out(run, rule)) for rule in RULES]
        margins = np.mean(run["held_margins"], axis=1)
        cuts = np.unique(margins)
        scores = [matthews_corrcoef(y, margins > cut) for cut in cuts]
        best = int(np.argmax(scores))
        print(f"| {name} | {len(y)} ({y.sum()}) | {auroc:.3f} | {run['estimate']:.3f} | "
              f"{cuts[best]:+.2f}: {scores[best]:.3f} | "
              + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells) + " |")
    for family, names in families.items():
        if len(names) > 1:   # pooled over the held-out parts of one family
            pooled = {rule: [held_out(runs[n], rule) for n in names] for rule in RULES}
            cells = [mccs(np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts]))
                     for parts in pooled.values()]
            gap = ("it is the estimate" if family == "crossfit" else "mean gap " + " / ".join(
                f"{np.mean([abs(estimate(runs[n], rule) - mccs(*held_out(runs[n], rule))[0]) for n in names]):.3f}"
                for rule in ("old (0.9)", "new (1.0)")))
            print(f"| {family} pooled | | | {gap} | | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in cells)
                  + " |")


if __name__ == "__main__":
    main()
