"""EMA on/off and AdamW against SophiaH for the multi-view head (issue 9), on photos no run chose anything on.

    python bench/bench_training.py synthetic --work bench/out              # 3 seeds, scored on unseen drives
    python bench/bench_training.py real --work bench/out --data ../shared/data/real-dev   # grouped 5-fold

Every variant is `roadwork train --set model.type=multiview` from configs/cpu.yaml with the frozen
embedded backbone (the head is what these settings change; the probe has no optimiser).
`synthetic` trains on `synth --seed 11` (`--folds 1`: one grouped split chooses the checkpoint and
the cut) with three run seeds and scores each bundle on the drives of `synth --seed 12`, which no
run saw; `real` (`--folds 5`) reports the out-of-fold estimate (each fold cut by a calibration fitted on
the others) with its 95% group-bootstrap interval, ambiguous rows left out. A rerun with the same
--work reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapt import evaluate, subset, synth  # noqa: E402
from common import ROADWORK, machine, run_measured, today  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
VARIANTS = {
    "AdamW": ["optim.optimizer=adamw", "optim.ema=false"],
    "AdamW + EMA 0.99": ["optim.optimizer=adamw", "optim.ema=true"],
    "SophiaH": ["optim.optimizer=sophia", "optim.ema=false"],
    "SophiaH + EMA 0.99": ["optim.optimizer=sophia", "optim.ema=true"],
    # issue 21: the checkpoint choice with the selection split's log-loss breaking near-ties
    "AdamW + EMA 0.99 + log-loss tie-break": ["optim.optimizer=adamw", "optim.ema=true",
                                              "optim.selection=served_mcc_log_loss"],
}
SEEDS = (0, 1, 2)


def train(data: Path, out: Path, cache: Path, overrides: list[str], folds: int) -> dict:
    if not (out / "metrics.json").is_file():
        args = [*ROADWORK, "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                "--config", str(CONFIG), "--folds", str(folds), "--set", "backbone_training.mode=frozen",
                "--set", "model.type=multiview", "--set", "trainer.loggers=[csv]"]
        for override in overrides:
            args += ["--set", override]
        seconds, _, _ = run_measured(args)
        (out / "wall_s").write_text(f"{seconds:.1f}")
    return json.loads((out / "metrics.json").read_text())


def epochs(metrics: dict) -> float:
    runs = [f.get("epochs_run", 0) for f in metrics["fits"]["multiview"]]
    return sum(runs) / len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=("real", "synthetic"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="real: a photo folder with group and ambiguous columns")
    parser.add_argument("--only", action="append", choices=sorted(VARIANTS), help="these variants (repeatable)")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in (args.only or VARIANTS)}
    cache = args.work / "cache"
    print(f"{args.suite}: {machine()}, {today()}, `python bench/bench_training.py {args.suite}`\n")
    if args.suite == "real":
        data = subset(args.data, args.work / "real-data")
        print("| variant | out-of-fold MCC [95% CI] | AUROC | epochs run (mean over folds) | wall s |")
        print("|---|---|---|---|---|")
        for name, overrides in variants.items():
            out = args.work / "training-real" / name.replace(" ", "_")
            metrics = train(data, out, cache, overrides, folds=5)
            v = metrics["validation"]
            print(
                f"| {name} | {v['mcc']:.3f} [{v['ci95']['mcc'][0]:.2f}, {v['ci95']['mcc'][1]:.2f}] | {v['auroc']:.3f} "
                f"| {epochs(metrics):.1f} | {float((out / 'wall_s').read_text()):.0f} |",
                flush=True,
            )
        return
    data = synth(args.work / "synth-train", 400, 11, 4)
    test = synth(args.work / "synth-test", 400, 12, 4)
    print("| variant | unseen drives MCC per seed | mean | unseen AUROC mean | selection-split MCC mean | epochs run |")
    print("|---|---|---|---|---|---|")
    for name, overrides in variants.items():
        unseen, auroc, oof, ran = [], [], [], []
        for seed in SEEDS:
            out = args.work / "training-synthetic" / f"{name.replace(' ', '_')}-seed{seed}"
            metrics = train(data, out, cache, [*overrides, f"seed={seed}"], folds=1)
            scored = evaluate(out / "bundle", test, out / "unseen", cache)
            unseen.append(scored["mcc"])
            auroc.append(scored["auroc"])
            oof.append(metrics["validation"]["mcc"])
            ran.append(epochs(metrics))
        print(f"| {name} | {', '.join(f'{m:.3f}' for m in unseen)} | {statistics.mean(unseen):.3f} "
              f"| {statistics.mean(auroc):.3f} | {statistics.mean(oof):.3f} | {statistics.mean(ran):.1f} |", flush=True)


if __name__ == "__main__":
    main()
