"""Does an ensemble beat its best member (issue 11)? The plan's spec, on real-dev and synthetic drives.

    python bench/bench_ensemble.py --work bench/out --real ../shared/data/real-dev [--only real-dev]

`roadwork ensemble --config configs/ensemble/plan.yaml --train-config configs/cpu.yaml` with frozen
features and, to fit a 2-core CPU, 3 grouped folds and at most 15 epochs per member. Reported: each
member's and each combination's out-of-fold MCC (combinations scored by a second grouped
cross-validation), the paired 95% interval of the served combination minus the best member, and the
same comparison on held-out test photos via `roadwork evaluate` (synthetic: `synth --seed 12`;
real-dev: the grouped 70/30 split of bench_evaluate.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, held_out_main, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["--set", "backbone_training.mode=frozen", "--set", "validation.folds=3", "--set", "optim.epochs=15"]


def bench(name: str, train: Path, test: Path, work: Path, cache: Path) -> list[str]:
    run = work / f"ensemble-{name}"
    if not (run / "metrics.json").is_file():
        run_measured([*ROADWORK, "ensemble", "--config", str(ROOT / "configs/ensemble/plan.yaml"), "--train-config",
                      str(ROOT / "configs/cpu.yaml"), *SETTINGS, "--data", str(train), "--out", str(run),
                      "--cache-dir", str(cache), "--resume"])
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["best_member"]
    report = work / f"ensemble-{name}-report"
    if not (report / "metrics.json").is_file():
        run_measured([*ROADWORK, "evaluate", "--bundle", str(run / "bundle"), "--bundle",
                      str(run / "members" / best / "bundle"), "--data", str(test), "--out", str(report),
                      "--cache-dir", str(cache)])
    tested = json.loads((report / "metrics.json").read_text())
    lines = [f"\n{name}: train {train}, test {test}\n", "| model | out-of-fold MCC [95% CI] | AUROC |", "|---|---|---|"]
    for member, m in metrics["members"].items():
        lines.append(f"| member {member} | {m['mcc']:.3f} [{m['mcc_ci95'][0]:.2f}, {m['mcc_ci95'][1]:.2f}] | "
                     f"{m['auroc']:.3f} |")
    for combination, c in metrics["combinations"].items():
        d = c["minus_best_member"]["ci95"]
        lines.append(f"| {combination} (minus best member [{d[0]:+.3f}, {d[1]:+.3f}]) | {c['mcc']:.3f} "
                     f"[{c['mcc_ci95'][0]:.2f}, {c['mcc_ci95'][1]:.2f}] | {c['auroc']:.3f} |")
    difference = tested["comparisons"][0]
    lines.append(f"\nserved: {metrics['combine']}; recommended: {metrics['recommended']}. Test photos "
                 f"({tested['n']}): ensemble MCC {tested['mcc']:.3f} {tested['ci95']['mcc']}, best member ({best}) "
                 f"{tested['compared'][0]['mcc']:.3f} {tested['compared'][0]['ci95']['mcc']}; member minus ensemble "
                 f"{difference['mcc_difference']:+.3f}, paired interval {difference['ci95']}")
    return lines


if __name__ == "__main__":
    held_out_main(__doc__, "bench_ensemble.py", bench)
