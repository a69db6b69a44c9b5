"""Self-supervised adaptation on unlabelled photos (issue 24): does SimCLR before training help real photos?

    python bench/bench_ssl.py --work /work/bench-transfer --real ../shared/data/real-dev [--epochs 5]
        [--top probe|finetune] [--folds 0 1 2 3 4] [--only VARIANT ...]

real-dev (ambiguous rows left out) in the grouped 5 folds of `bench_transfer.py` (same folders, same
--work). Each variant adapts the embedded backbone with `roadwork adapt --method simclr` (labels never
read), then trains on it (`data.adapted`) on four folds and scores the fifth with the served bundle at
its 0.5 cut:
* none: the backbone as shipped;
* honest: adapted on the training folds' photos only, one adaptation per fold (new photos never seen);
* transductive: adapted once on every real-dev photo, test folds included (what a miner adapting to the
  validator's pool would do), reported apart;
* synthetic: adapted once on synthetic scenes only (`synth --seed 11`, 400 frames of 4-frame drives).
On top (`--top`): `probe`, the frozen-backbone probe, which shows what adaptation did to the features
at seconds per fold; or `finetune`, the default training (the backbone fine-tuned from the adapted
weights) with one grouped validation split instead of five folds (`validation.folds=1`), then the
served refit on every training photo: two fine-tunings per test fold, not six. Reported: pooled
held-out MCC at the served cut with a group-bootstrap interval, AUROC of the raw margins (a temperature
fitted on one small validation split can saturate the probabilities to 0 and 1), and adaptation seconds
per epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import splits  # noqa: E402
from common import machine, today  # noqa: E402
from roadwork.config import AdaptConfig, load_config  # noqa: E402
from roadwork.data.sources import load_samples  # noqa: E402
from roadwork.evaluate.metrics import with_intervals  # noqa: E402
from roadwork.serve.scorer import load_scorer, spread  # noqa: E402
from roadwork.train.adapt import adapt  # noqa: E402
from roadwork.train.run import train  # noqa: E402

TOPS = {"probe": ["backbone_training.mode=frozen", "model.type=probe"], "finetune": ["validation.folds=1"]}


def adapted(data: list[Path], out: Path, epochs: int) -> dict:
    """``roadwork adapt`` once per folder (a finished one is reused)."""
    manifest = out / "adapted.json"
    if not manifest.is_file():
        adapt([str(d) for d in data], out, AdaptConfig(epochs=epochs), backbone=load_config(None).data.backbone,
              progress=False)
    return json.loads(manifest.read_text())


def scored(train_folder: Path, test_folder: Path, run: Path, cache: Path, adapted_folder: Path | None,
           top: str) -> dict:
    """Train ``top`` (on the adapted backbone when given) and score the held-out fold: served
    probabilities and raw margins (a run whose fitted temperature saturates its probabilities to 0
    and 1 still ranks by margin); cached as JSON, margins added to an older result that lacks them."""
    result = run / "held-out.json"
    found = json.loads(result.read_text()) if result.is_file() else {}
    if "margins" in found:
        return found
    if not found:
        overrides = TOPS[top] + ([f"data.adapted={adapted_folder}"] if adapted_folder else [])
        train(str(train_folder), run, load_config(None, overrides), cache_dir=cache, progress=False, overwrite=True)
    samples = load_samples(str(test_folder))
    scorer = load_scorer(run / "bundle")
    margins, good, failures = scorer.sample_margins(samples, cache)
    # a fold ensemble ranks by its members' mean margin
    ranked = margins.mean(dim=1) if margins is not None and margins.ndim == 2 else margins
    with open(test_folder / "metadata.csv", newline="") as handle:
        groups = [r["group"] for r in csv.DictReader(handle)]
    found = {"probabilities": spread(len(samples), good, None if margins is None else scorer.calibration(margins)),
             "margins": spread(len(samples), good, ranked), "labels": [s.label for s in samples],
             "groups": groups, "failures": len(failures)}
    result.write_text(json.dumps(found))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", action="append", choices=["none", "honest", "transductive", "synthetic"])
    parser.add_argument("--top", choices=list(TOPS), default="probe")
    parser.add_argument("--folds", type=int, nargs="+", choices=range(5), default=list(range(5)),
                        help="test folds to score (pooled over these only): fewer when each costs a fine-tuning")
    args = parser.parse_args()
    print(f"machine: {machine()}; date: {today()}; command: python bench/bench_ssl.py --work {args.work} "
          f"--real {args.real} --epochs {args.epochs} --top {args.top} "
          f"--folds {' '.join(map(str, args.folds))}", flush=True)
    found = splits(args.work, args.real)
    folds = {k: found[f"grouped:{k}"] for k in args.folds}
    root, cache = args.work / "ssl", args.work / "cache"
    shared = {"transductive": [found["crossfit"][0]], "synthetic": [found["synthetic"][0]]}
    rows = []
    for variant in args.only or ["none", "honest", "transductive", "synthetic"]:
        pooled: dict[str, list] = {"probabilities": [], "margins": [], "labels": [], "groups": []}
        per_epoch = []
        for k, (train_folder, test_folder) in folds.items():
            folder = None
            if variant != "none":
                data = [train_folder] if variant == "honest" else shared[variant]
                folder = root / "adapted" / (f"honest-fold{k}" if variant == "honest" else variant)
                manifest = adapted(data, folder, args.epochs)
                per_epoch.append(manifest["fit_s"] / max(manifest["epochs"], 1))
            runs = root / ("runs" if args.top == "probe" else f"runs-{args.top}")
            result = scored(train_folder, test_folder, runs / variant / f"fold{k}", cache, folder, args.top)
            for key in pooled:
                pooled[key] += [f"{k}:{g}" for g in result[key]] if key == "groups" else result[key]
            print(f"{variant} fold {k}: done", flush=True)
        keep = [i for i, p in enumerate(pooled["probabilities"]) if p is not None]
        groups = np.unique([pooled["groups"][i] for i in keep], return_inverse=True)[1]
        labels = np.array([pooled["labels"][i] for i in keep])
        metrics = with_intervals(np.array([pooled["probabilities"][i] for i in keep]), labels, groups)
        metrics["auroc"] = roc_auc_score(labels, [pooled["margins"][i] for i in keep])   # by margin: see scored
        rows.append((variant, metrics, float(np.mean(per_epoch)) if per_epoch else None))
        print(rows[-1], flush=True)
    print("\n| variant | held-out MCC [95% CI] | AUROC (margins) | adaptation s/epoch |\n|---|---|---|---|")
    for variant, metrics, seconds in rows:
        low, high = metrics["ci95"]["mcc"]
        print(f"| {variant} | {metrics['mcc']:.3f} [{low:.2f}, {high:.2f}] | {metrics['auroc']:.3f} | "
              + (f"{seconds:.0f} |" if seconds is not None else "- |"))


if __name__ == "__main__":
    main()
