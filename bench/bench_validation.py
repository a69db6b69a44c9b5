"""Does validation tell the truth? Reported validation vs MCC on photos the run never saw (issue 6).

    python bench/bench_validation.py leakage   --work bench/out      # synthetic drives: random vs grouped split
    python bench/bench_validation.py synthetic --work bench/out --seeds 0 1 2
    python bench/bench_validation.py real      --work bench/out --data ../shared/data/real-dev

* leakage: train on `synth --n 800 --frames-per-drive 8 --seed 11`, test on unseen drives
  (`--n 400 --frames-per-drive 8 --seed 12`); the old random row split against grouped validation.
* synthetic: train on `synth --n 1000 --seed 1`, test on `--n 400 --seed 2` (image-only, as served).
  Per seed: the cut rules on the same single-split head (old: raw MCC argmax on validation margins
  with metadata; margin 0; new: bootstrap-smoothed on image-only margins), then `--folds 5`, and the
  probe against the multi-view head.
* real: grouped 5-fold cross-validation over a real photo folder with a `group` column (ambiguous
  rows excluded); every variant trains on four folds (and validates inside them) and is scored on
  the fifth; predictions are pooled over the five test folds.
All variants start from configs/cpu.yaml. Results go to stdout as Markdown tables. A rerun with the
same --work reuses finished training runs and only scores them again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import matthews_corrcoef, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, cached_photos, machine, subset_folder, today  # noqa: E402
from roadwork.config import load_config  # noqa: E402
from roadwork.data.splits import kfold_splits  # noqa: E402
from roadwork.evaluate.run import evaluate  # noqa: E402
from roadwork.features.table import FeatureTable, head_margins  # noqa: E402
from roadwork.serve.bundle import load_bundle  # noqa: E402
from roadwork.serve.calibration import candidate_cuts  # noqa: E402
from roadwork.stats import bootstrap_mcc_curves  # noqa: E402
from roadwork.train.run import train  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"


def synth(path: Path, n: int, seed: int, frames: int = 1) -> Path:
    if not (path / "metadata.csv").is_file():
        subprocess.run([*ROADWORK, "synth", str(path), "--n", str(n), "--seed", str(seed), "--frames-per-drive",
                        str(frames)], check=True, capture_output=True)
    return path


def run(data: Path, out: Path, cache: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Train, or reuse a finished run in ``out`` (so a rerun re-scores saved bundles with current code)."""
    if (out / "metrics.json").is_file() and (out / "bundle" / "manifest.json").is_file():
        return json.loads((out / "metrics.json").read_text()), out / "bundle"
    # Frozen features, as when these results were recorded (fine-tuning is measured in bench_adapt.py).
    config = load_config(CONFIG, ["backbone_training.mode=frozen", *overrides])
    metrics = train(str(data), out, config, cache_dir=cache, progress=False)
    return metrics, out / "bundle"


def fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def leakage(work: Path, cache: Path) -> None:
    train_data = synth(work / "drives-train", 800, 11, frames=8)
    test_data = synth(work / "drives-test", 400, 12, frames=8)
    variants = {
        "random row split (old), multi-view": ["validation.groups=rows", "validation.folds=1", "model.type=multiview"],
        "grouped split, multi-view": ["validation.folds=1", "model.type=multiview"],
        "random row split (old), probe": ["validation.groups=rows", "validation.folds=1", "model.type=probe"],
        "grouped split, probe": ["validation.folds=1", "model.type=probe"],
        "grouped 5 folds, auto (default)": [],
    }
    print("\n| validation | reported validation MCC [95% CI] | MCC on unseen drives | AUROC unseen | gap |")
    print("|---|---|---|---|---|")
    for name, overrides in variants.items():
        metrics, bundle = run(train_data, work / "leakage" / str(abs(hash(name)) % 10**6), cache, overrides)
        test = evaluate(
            bundle, str(test_data), work / "leakage-reports" / str(abs(hash(name)) % 10**6), cache_dir=cache
        )
        val = metrics["validation"]
        print(
            f"| {name} | {val['mcc']:.3f} [{val['ci95']['mcc'][0]:.2f}, {val['ci95']['mcc'][1]:.2f}] "
            f"| {test['mcc']:.3f} "
            f"| {test['auroc']:.3f} | {val['mcc'] - test['mcc']:+.3f} |",
            flush=True,
        )


def _margins(
    bundle_path: Path, data: Path, cache: Path, names: list[str] | None, hide: bool
) -> tuple[np.ndarray, np.ndarray]:
    bundle = load_bundle(bundle_path)
    samples, _, features = cached_photos(data, cache)
    if names is not None:
        index = {s.file_name: i for i, s in enumerate(samples)}
        rows = [index[n] for n in names]
        samples, features = [samples[i] for i in rows], [features[i] for i in rows]
    from roadwork.model.text import TextEncoder

    text = TextEncoder().embed(s.description for s in samples if s.description) if bundle.head_config.text else None
    table = FeatureTable.build(samples, features, bundle.vocab, text)
    table = table.image_only() if hide else table
    return head_margins(bundle.head, table).numpy(), table.labels.numpy()


def _raw_argmax(margins: np.ndarray, labels: np.ndarray) -> float:
    cuts = candidate_cuts(margins)
    return float(cuts[np.argmax(bootstrap_mcc_curves(margins, labels, cuts, np.ones((1, len(margins))))[0])])


def synthetic(work: Path, cache: Path, seeds: list[int]) -> None:
    train_data = synth(work / "heads-train", 1000, 1)
    test_data = synth(work / "heads-test", 400, 2)
    rows: dict[str, list[tuple[float, float, float]]] = {}

    def record(name: str, test_mcc: float, auroc: float, reported: float) -> None:
        rows.setdefault(name, []).append((test_mcc, auroc, reported))

    for seed in seeds:
        base = work / "synthetic" / f"seed{seed}"
        metrics, bundle = run(train_data, base / "mv1", cache, ["validation.folds=1", "model.type=multiview",
                                                                  f"seed={seed}"])
        with open(base / "mv1" / "validation_predictions.csv") as handle:
            names = [r["file_name"] for r in csv.DictReader(handle)]
        val_meta, val_labels = _margins(bundle, train_data, cache, names, hide=False)
        test_margins, test_labels = _margins(bundle, test_data, cache, None, hide=True)
        auroc = roc_auc_score(test_labels, test_margins)
        cut = load_bundle(bundle).calibration.margin_threshold
        for name, value in (
            ("single split, old cut (raw MCC argmax, margins with metadata)", _raw_argmax(val_meta, val_labels)),
            ("single split, margin 0", 0.0),
            ("single split, new cut (smoothed, image-only)", cut),
        ):
            record(name, matthews_corrcoef(test_labels, test_margins > value), auroc, metrics["validation"]["mcc"])
        for name, overrides in (("probe, single split", ["validation.folds=1", "model.type=probe"]),
                                ("probe, --folds 5", ["model.type=probe"]),
                                ("multi-view, --folds 5", ["model.type=multiview"])):
            metrics, bundle = run(train_data, base / name.replace(" ", "").replace(",", "_"), cache,
                                  [*overrides, f"seed={seed}"])
            test = evaluate(bundle, str(test_data), base / "reports" / name.replace(" ", ""), cache_dir=cache)
            record(name, test["mcc"], test["auroc"], metrics["validation"]["mcc"])
        # model.type=auto keeps the candidate with the better out-of-fold MCC: the same fits as above.
        probe, multiview = rows["probe, --folds 5"][-1], rows["multi-view, --folds 5"][-1]
        record("auto, --folds 5 (the default)", *(multiview if multiview[2] > probe[2] else probe))
        for name, values in rows.items():
            print(f"seed {seed}: {name}: test {values[-1][0]:.3f} reported {values[-1][2]:.3f}", flush=True)
    print(f"\n| variant | test MCC (mean ± sd over seeds {seeds}) | test AUROC | reported validation MCC |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(
            f"| {name} | {' | '.join(fmt([v[i] for v in values]) for i in range(3))} |"
        )


def real(work: Path, cache: Path, data: Path, seed: int) -> None:
    with open(data / "metadata.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("ambiguous", "0") != "1"]
    labels = [int(r["label"]) for r in rows]
    groups = np.unique([r["group"] for r in rows], return_inverse=True)[1]
    variants = {"probe, single split": ["validation.folds=1", "model.type=probe"],
                "multi-view head, single split": ["validation.folds=1", "model.type=multiview"],
                "probe, --folds 5": ["model.type=probe"],
                "multi-view head, --folds 5": ["model.type=multiview"]}
    pooled: dict[str, tuple[list, list]] = {name: ([], []) for name in variants}
    pooled["auto, --folds 5 (the default)"] = ([], [])
    estimates: list[tuple[int, str, float, float]] = []
    for k, (fit, held) in enumerate(kfold_splits(labels, groups, 5, seed)):
        train_data = subset_folder(data, [rows[i] for i in fit], work / "real" / f"fold{k}" / "train")
        test_data = subset_folder(data, [rows[i] for i in held], work / "real" / f"fold{k}" / "test")
        reported = {}
        for name, overrides in variants.items():
            out = work / "real" / f"fold{k}" / name.replace(" ", "").replace(",", "_")
            metrics, bundle = run(train_data, out, cache, [*overrides, f"seed={seed}"])
            evaluate(bundle, str(test_data), out / "test", cache_dir=cache)
            with open(out / "test" / "predictions.csv") as handle:
                scored = list(csv.DictReader(handle))
            probs = [float(r["probability"]) for r in scored]
            truth = [int(r["label"]) for r in scored]
            pooled[name][0].extend(probs)
            pooled[name][1].extend(truth)
            reported[name] = (metrics["validation"]["mcc"], probs, truth)
            test_mcc = matthews_corrcoef(truth, np.array(probs) > 0.5)
            estimates.append((k, name, metrics["validation"]["mcc"], test_mcc))
            print(f"fold {k}: {name}: reported {metrics['validation']['mcc']:.3f} test {test_mcc:.3f}", flush=True)
        chosen = max(("probe, --folds 5", "multi-view head, --folds 5"), key=lambda n: reported[n][0])
        pooled["auto, --folds 5 (the default)"][0].extend(reported[chosen][1])
        pooled["auto, --folds 5 (the default)"][1].extend(reported[chosen][2])
    print(f"\n{len(rows)} photos ({sum(labels)} roadwork), {groups.max() + 1} groups; pooled over 5 grouped test folds")
    print("\n| variant | MCC at the served 0.5 | AUROC |")
    print("|---|---|---|")
    for name, (probs, truth) in pooled.items():
        print(f"| {name} | {matthews_corrcoef(truth, np.array(probs) > 0.5):.3f} | {roc_auc_score(truth, probs):.3f} |")
    print("\n| variant | mean reported validation MCC | mean test-fold MCC |")
    print("|---|---|---|")
    for name in variants:
        mine = [(r, t) for _, n, r, t in estimates if n == name]
        print(f"| {name} | {statistics.mean(r for r, _ in mine):.3f} | {statistics.mean(t for _, t in mine):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("leakage", "synthetic", "real"))
    parser.add_argument("--work", type=Path, default=Path("bench/out"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    cache = args.cache_dir or args.work / "cache"
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"machine: {machine()}; date: {today()}; command: {' '.join(sys.argv)}")
    if args.experiment == "leakage":
        leakage(args.work, cache)
    elif args.experiment == "synthetic":
        synthetic(args.work, cache, args.seeds)
    else:
        if args.data is None:
            parser.error("real needs --data")
        real(args.work, cache, args.data, args.seeds[0])


if __name__ == "__main__":
    main()
