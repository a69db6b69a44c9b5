"""Full multi-view head vs the linear baseline, and the ablation table, on synthetic data.

    python bench/bench_heads.py --work bench/out --seeds 0 1 2

Trains on `roadwork synth --n 1000 --seed 1` (one grouped 15% validation split: `validation.folds=1`),
evaluates on a separate `--n 400 --seed 2` set. Every variant starts from configs/cpu.yaml with the
multi-view head and changes one thing.
The first run also measures a cold training (extraction included) against a warm rerun.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, today  # noqa: E402
from roadwork.config import load_config  # noqa: E402
from roadwork.evaluate.run import evaluate  # noqa: E402
from roadwork.train.run import train  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
# served_metadata=all: the test set is scored with its metadata, the image-only copy without.
BASE = ["validation.folds=1", "model.type=multiview", "validation.served_metadata=all"]
VARIANTS = {
    "full head (configs/cpu.yaml)": [],
    "probe (logistic regression on [global, max over views])": ["model.type=probe"],
    "without pyramid": ["model.pyramid=false"],
    "without gated attention": ["model.attention_layers=0"],
    "without GAFM (mean pooling)": ["model.fusion=mean"],
    "without metadata": ["model.metadata=false"],
    "without extra losses (focal only)": ["loss.consistency_weight=0", "loss.weather_weight=0"],
    "full head + metadata dropout 0.5": ["data.metadata_dropout=0.5"],
}


def image_only_copy(source: Path, target: Path) -> Path:
    """The test set as a validator sends it: same images (hard links), labels, no metadata."""
    if (target / "metadata.csv").is_file():
        return target
    (target / "images").mkdir(parents=True, exist_ok=True)
    with open(source / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        link = target / row["file_name"]
        if not link.exists():
            os.link(source / row["file_name"], link)
    with open(target / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        writer.writerows((row["file_name"], row["label"]) for row in rows)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("bench/out"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    train_data, test_data, cache = args.work / "heads-train", args.work / "heads-test", args.work / "heads-cache"
    for path, n, seed in ((train_data, 1000, 1), (test_data, 400, 2)):
        if not (path / "metadata.csv").is_file():
            subprocess.run([*ROADWORK, "synth", str(path), "--n", str(n), "--seed", str(seed)], check=True)

    image_only_test = image_only_copy(test_data, args.work / "heads-test-image-only")
    print(f"machine: {machine()}; date: {today()}")
    if not cache.exists():
        timings = []
        for attempt in ("cold", "warm"):
            started = time.perf_counter()
            metrics = train(str(train_data), args.work / f"heads-{attempt}", load_config(CONFIG, BASE), cache_dir=cache,
                            progress=False)
            timings.append(time.perf_counter() - started)
            print(f"{attempt} train: {timings[-1]:.1f} s (extraction {metrics['timing_s']['extract']} s, "
                  f"fit {metrics['timing_s']['fit']} s)", flush=True)
        print(f"second train / first train = {timings[1] / timings[0]:.2f}", flush=True)
    rows = []
    for name in args.variants:
        overrides = VARIANTS[name]
        results = []
        for seed in args.seeds:
            out = args.work / "heads-runs" / f"{abs(hash(name)) % 10**8}-{seed}"
            started = time.perf_counter()
            metrics = train(str(train_data), out, load_config(CONFIG, [*BASE, *overrides, f"seed={seed}"]),
                            cache_dir=cache, progress=False)
            seconds = time.perf_counter() - started
            test = evaluate(out / "bundle", str(test_data), args.work / "heads-reports" / out.name, cache_dir=cache)
            bare = evaluate(
                out / "bundle",
                str(image_only_test),
                args.work / "heads-reports" / f"{out.name}-image-only",
                cache_dir=cache,
            )
            results.append((metrics, test, bare, seconds))
            print(f"{name} seed={seed}: val MCC {metrics['validation']['mcc']:.3f} test MCC {test['mcc']:.3f} "
                  f"AUROC {test['auroc']:.3f} image-only test MCC {bare['mcc']:.3f} train {seconds:.0f} s "
                  f"(extract {metrics['timing_s']['extract']} s)", flush=True)
        mccs = [t["mcc"] for _, t, _, _ in results]
        bare_mccs = [b["mcc"] for _, _, b, _ in results]
        rows.append(
            (
                name,
                results[0][0]["parameters"],
                statistics.mean(m["validation"]["mcc"] for m, *_ in results),
                statistics.mean(mccs),
                statistics.pstdev(mccs),
                statistics.mean(t["auroc"] for _, t, _, _ in results),
                statistics.mean(bare_mccs),
                statistics.pstdev(bare_mccs),
                statistics.mean(r[3] for r in results),
            )
        )
    print(f"\n| variant | parameters | val MCC | test MCC (mean ± sd over seeds {args.seeds}) | test AUROC "
          "| image-only test MCC | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, params, val, mcc, sd, auroc, bare, bare_sd, seconds in rows:
        print(f"| {name} | {params:,} | {val:.3f} | {mcc:.3f} ± {sd:.3f} | {auroc:.3f} | {bare:.3f} ± {bare_sd:.3f} "
              f"| {seconds:.0f} |")


if __name__ == "__main__":
    main()
