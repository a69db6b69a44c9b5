"""Does the segmentation branch pay? Backbone fine-tuning with and without its dice + BCE term on the
masks of synthetic scenes (issue 20, part 3).

    python bench/bench_segmentation.py --work /work/bench-seg --real ../shared/data/real-dev [--seeds 0 1]
        [--weights 0 1] [--only synthetic|real-dev] [--evidence]
    python bench/bench_segmentation.py --work /work/bench-seg --cost synthetic-seed0-dice0.1 \
        synthetic-seed0-dice0.1-evidence

* synthetic: train on `synth --n 400 --frames-per-drive 4 --seed 11` (its annotations.json gives every
  photo's work-zone mask), score the served bundle on unseen drives (`--seed 12`) with `roadwork
  evaluate` (which also scores the branch's mask against theirs: IoU), per training seed and
  `loss.dice_weight` (0 = off). Without --evidence the heads ignore the branch (`model.evidence=false`:
  it only shapes the backbone); with it, runs with a branch are named `-evidence` and their heads
  also read its evidence.
* real-dev: a seeded 70/30 split by `group` (ambiguous rows left out); train on the 70% alone, on the
  70% plus the synthetic training scenes without masks (dice 0), and with their masks (dice 1); score
  on the 30%. Real photos have no masks: only the synthetic ones feed the branch.
--cost A B times the request path (`predict_images`, one photo per call, as the server answers) of two
finished runs' bundles on the same 48 unseen synthetic photos, alternating A and B photo by photo so
that both see the same load on the machine: what serving the branch costs per photo.
Every run is `roadwork train` with configs/cpu.yaml and the default fine-tuning (the embedded
EfficientNet-Lite0, last blocks) on one grouped split (`validation.folds=1`): a fine-tune per run,
affordable on a CPU. A rerun with the same --work reuses finished runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, run_measured, subset_folder, today  # noqa: E402
from roadwork.config import load_config  # noqa: E402
from roadwork.evaluate.run import evaluate  # noqa: E402
from roadwork.train.run import train  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cpu.yaml"
BASE = ["validation.folds=1", "backbone_training.mode=last_blocks"]


def synthetic(work: Path) -> tuple[Path, Path]:
    for split, seed in (("synth-train", 11), ("synth-test", 12)):
        if not (work / split / "annotations.json").is_file():
            run_measured([*ROADWORK, "synth", str(work / split), "--n", "400", "--seed", str(seed),
                          "--frames-per-drive", "4", "--overwrite"])
    return work / "synth-train", work / "synth-test"


def real_split(work: Path, real: Path, seed: int = 0) -> tuple[Path, Path]:
    import numpy as np

    with open(real / "metadata.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("ambiguous", "0") in ("", "0", "false", "False")]
    groups = sorted({r["group"] for r in rows})
    held = set(np.random.default_rng(seed).permutation(groups)[: round(0.3 * len(groups))].tolist())
    return (subset_folder(real, [r for r in rows if r["group"] not in held], work / "real-train"),
            subset_folder(real, [r for r in rows if r["group"] in held], work / "real-test"))


def scored(name: str, data: Path, test: Path, work: Path, overrides: list[str], add: list[Path]) -> dict:
    out = work / "runs" / name
    if not (out / "metrics.json").is_file():
        train(str(data), out, load_config([CONFIG], [*BASE, *overrides]), add_data=[str(a) for a in add],
              cache_dir=work / "cache", progress=False, resume=(out / "splits").is_dir())
    report = work / "reports" / name
    if not (report / "metrics.json").is_file():
        evaluate(out / "bundle", str(test), report, cache_dir=work / "cache", resamples=1000)
    metrics, trained = json.loads((report / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    fits = trained["backbone_training"]["fits"]
    masks = metrics.get("segmentation") or {}
    return {"name": name, "mcc": metrics["mcc"], "mcc_ci95": metrics["ci95"]["mcc"], "auroc": metrics["auroc"],
            "iou": masks.get("iou"), "masked": sum(f.get("photos_with_masks", 0) for f in fits),
            "fit_s": sum(f.get("fit_s", 0) for f in fits)}


def serving_cost(work: Path, names: list[str], photos: int = 48) -> None:
    import time

    import numpy as np
    import torch

    from roadwork.data.sources import load_samples
    from roadwork.serve.scorer import load_scorer

    torch.set_num_threads(2)
    scorers = [load_scorer(work / "runs" / name / "bundle") for name in names]
    for scorer in scorers:
        scorer.warm_up()
    images = [s.read_bytes() for s in load_samples(str(work / "synth-test"))[:photos]]
    seconds: list[list[float]] = [[] for _ in scorers]
    for image in images:
        for scorer, times in zip(scorers, seconds):
            started = time.perf_counter()
            scorer.predict_images([image])
            times.append(time.perf_counter() - started)
    print("\n| bundle | evidence sources | p50 ms per photo | mean ms per photo |\n|---|---|---|---|")
    for name, scorer, times in zip(names, scorers, seconds):
        print(f"| {name} | {len(scorer.bundle.evidence_sources)} | {np.median(times) * 1000:.1f} | "
              f"{np.mean(times) * 1000:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="loss.dice_weight values")
    parser.add_argument("--only", choices=["synthetic", "real-dev"])
    parser.add_argument("--evidence", action="store_true", help="heads read the branch's evidence")
    parser.add_argument("--cost", nargs=2, metavar=("RUN_A", "RUN_B"), help="time two finished runs' request path")
    args = parser.parse_args()
    if args.cost:
        print(f"machine: {machine()}; date: {today()}; command: python bench/bench_segmentation.py --work {args.work} "
              f"--cost {' '.join(args.cost)}", flush=True)
        serving_cost(args.work, args.cost)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    weights = " ".join(f"{w:g}" for w in args.weights)
    print(f"machine: {machine()}; date: {today()}; command: python bench/bench_segmentation.py --work {args.work} "
          f"--real {args.real} --seeds {' '.join(map(str, args.seeds))} --weights {weights}"
          + (f" --only {args.only}" if args.only else "") + (" --evidence" if args.evidence else ""), flush=True)
    evidence = [f"model.evidence={str(args.evidence).lower()}"]
    suffix = "-evidence" if args.evidence else ""
    synth_train, synth_test = synthetic(args.work)
    rows = []
    if args.only in (None, "synthetic"):
        for seed in args.seeds:
            for dice in args.weights:
                rows.append(scored(f"synthetic-seed{seed}-dice{dice:g}" + (suffix if dice else ""), synth_train,
                                   synth_test, args.work, [f"seed={seed}", f"loss.dice_weight={dice}", *evidence], []))
                print(rows[-1], flush=True)
    if args.only in (None, "real-dev"):
        real_train, real_test = real_split(args.work, args.real)
        for name, add, dice in (("real-dev alone", [], 0), ("real-dev + synthetic, no masks", [synth_train], 0),
                                ("real-dev + synthetic masks", [synth_train], 1)):
            rows.append(scored(name.replace(" ", "-").replace(",", "") + (suffix if dice else ""), real_train,
                               real_test, args.work, [f"loss.dice_weight={dice}", *evidence], add))
            print(rows[-1], flush=True)
    print("\n| run | held-out MCC [95% CI] | AUROC | mask IoU | photos with masks | fine-tuning s |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["mcc_ci95"]
        iou = "n/a" if r["iou"] is None else f"{r['iou']:.3f}"
        print(f"| {r['name']} | {r['mcc']:.3f} [{low:.2f}, {high:.2f}] | {r['auroc']:.3f} | {iou} | {r['masked']} | "
              f"{r['fit_s']:.0f} |")


if __name__ == "__main__":
    main()
