"""Frozen features against a fine-tuned backbone (issue 7): which backbone training mode wins on small data?

    python bench/bench_adapt.py real      --work bench/out --data ../shared/data/real-dev
    python bench/bench_adapt.py synthetic --work bench/out
    python bench/bench_adapt.py throughput --work bench/out   # training images/s per mode, nothing else running

Every variant is one `roadwork train --folds 5` run from configs/cpu.yaml (the embedded
EfficientNet-Lite0 at 224 px): the reported MCC and AUROC are its out-of-fold estimate, every fold cut by
a calibration fitted on the other folds, with a 95% group-bootstrap interval. `synthetic` also scores
the served bundle on unseen drives (`synth --seed 12`). Real photos: rows marked ambiguous are left out.
Per fold: fine-tuning seconds, extraction seconds with the adapted backbone, and the whole run's wall
time divided by the folds (of the last, possibly resumed, invocation). A rerun with the same --work
reuses finished runs and continues interrupted ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, run_measured, subset_folder, today  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
VARIANTS = {
    "frozen, probe": ["backbone_training.mode=frozen", "model.type=probe"],
    "frozen, multi-view head": ["backbone_training.mode=frozen", "model.type=multiview"],
    "frozen + feature bank K=2 (heavy), probe": ["backbone_training.mode=frozen", "data.augment=heavy",
                                                  "data.augment_copies=2", "model.type=probe"],
    "frozen + feature bank K=4 (heavy), probe": ["backbone_training.mode=frozen", "data.augment=heavy",
                                                  "data.augment_copies=4", "model.type=probe"],
    "last 2 blocks, probe": ["backbone_training.mode=last_blocks", "model.type=probe"],
    "full fine-tuning, probe": ["backbone_training.mode=full", "model.type=probe"],
    "DoRA r=8 (pointwise convs), probe": ["backbone_training.mode=dora", "model.type=probe"],
}


def subset(source: Path, target: Path) -> Path:
    """``source`` without its ambiguous rows."""
    with open(source / "metadata.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("ambiguous", "0") != "1"]
    return subset_folder(source, rows, target)


def synth(path: Path, n: int, seed: int, frames: int) -> Path:
    if not (path / "metadata.csv").is_file():
        run_measured([*ROADWORK, "synth", str(path), "--n", str(n), "--seed", str(seed), "--frames-per-drive",
                      str(frames)])
    return path


def train(data: Path, out: Path, cache: Path, overrides: list[str]) -> tuple[dict, float]:
    if (out / "metrics.json").is_file() and (out / "wall_s").is_file():
        return json.loads((out / "metrics.json").read_text()), float((out / "wall_s").read_text())
    # --resume: an interrupted variant continues; its finished folds are reused only if the same data,
    # split and settings made them (train checks), so the numbers are those of one uninterrupted run.
    args = [*ROADWORK, "train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
            "--config", str(CONFIG), "--folds", "5", "--resume"]
    for override in overrides:
        args += ["--set", override]
    seconds, _, _ = run_measured(args)
    (out / "wall_s").write_text(f"{seconds:.1f}")
    return json.loads((out / "metrics.json").read_text()), seconds


def row(name: str, metrics: dict, seconds: float, unseen: dict | None = None) -> str:
    v = metrics["validation"]
    fits = metrics["backbone_training"]["fits"]
    tune = sum(f.get("fit_s", 0) for f in fits) / len(fits) if fits else 0.0
    extract = sum(f.get("extract_s", 0) for f in fits) / len(fits) if fits else 0.0
    low, high = v["ci95"]["mcc"]
    cells = [name, f"{v['mcc']:.3f} [{low:.2f}, {high:.2f}]", f"{v['auroc']:.3f}"]
    if unseen is not None:
        cells += [f"{unseen['mcc']:.3f}", f"{unseen['auroc']:.3f}"]
    cells += [f"{tune:.0f}" if fits else "-", f"{extract:.0f}" if fits else "-", f"{seconds / metrics['folds']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def evaluate(bundle: Path, data: Path, out: Path, cache: Path) -> dict:
    if not (out / "metrics.json").is_file():
        run_measured([*ROADWORK, "evaluate", "--bundle", str(bundle), "--data", str(data), "--out", str(out),
                      "--cache-dir", str(cache)])
    return json.loads((out / "metrics.json").read_text())


def throughput(batch: int = 32, steps: int = 3) -> None:
    """Training images per second of each mode on the embedded backbone at 224 px (one warm-up step)."""
    import time

    import torch

    from roadwork.backbones.adapt import adapt_backbone
    from roadwork.backbones.base import create_backbone

    print("| mode | trainable parameters | training images/s (batch 32, 224 px) |")
    print("|---|---|---|")
    views = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    for mode in ("last_blocks", "lora", "dora", "full"):
        torch.manual_seed(0)
        backbone = create_backbone("efficientnet-lite0")
        adapt_backbone(backbone, mode, blocks=2)
        backbone.train()
        classifier = torch.nn.Linear(backbone.feature_dim, 1)
        parameters = [p for p in backbone.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters + list(classifier.parameters()), lr=1e-4)
        for step in range(steps + 1):
            if step == 1:
                started = time.perf_counter()
            classifier(backbone(views)).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        rate = batch * steps / (time.perf_counter() - started)
        print(f"| {mode} | {sum(p.numel() for p in parameters):,} | {rate:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=("real", "synthetic", "throughput"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="real: a photo folder with group and ambiguous columns")
    parser.add_argument("--only", nargs="*", help="run only variants whose name contains one of these")
    args = parser.parse_args()
    cache = args.work / "cache"
    chosen = {n: o for n, o in VARIANTS.items() if not args.only or any(s in n for s in args.only)}
    print(f"{args.suite}: {machine()}, {today()}, `python bench/bench_adapt.py {args.suite}`\n")
    if args.suite == "throughput":
        throughput()
    elif args.suite == "real":
        data = subset(args.data, args.work / "real-data")
        print("| variant | out-of-fold MCC [95% CI] | AUROC | fine-tune s/fold | extract s/fold | wall s/fold |")
        print("|---|---|---|---|---|---|")
        for name, overrides in chosen.items():
            metrics, seconds = train(data, args.work / "real" / name.replace(" ", "_"), cache, overrides)
            print(row(name, metrics, seconds), flush=True)
    else:
        data = synth(args.work / "synth-train", 400, 11, 4)
        test = synth(args.work / "synth-test", 400, 12, 4)
        print("| variant | out-of-fold MCC [95% CI] | AUROC | unseen drives MCC | unseen AUROC | fine-tune s/fold "
              "| extract s/fold | wall s/fold |")
        print("|---|---|---|---|---|---|---|---|")
        for name, overrides in chosen.items():
            out = args.work / "synthetic" / name.replace(" ", "_")
            metrics, seconds = train(data, out, cache, overrides)
            unseen = evaluate(out / "bundle", test, out / "unseen", cache)
            print(row(name, metrics, seconds, unseen), flush=True)


if __name__ == "__main__":
    main()
