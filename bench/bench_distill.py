"""Distillation (issue 11): does a probe student of the ensemble beat the plain probe, at probe cost?

    python bench/bench_distill.py --work bench/out --dataset real-dev

Needs bench_ensemble.py's ensemble and bench_evaluate.py's temperature-calibrated probe for the same
dataset in --work (same training photos, configs/cpu.yaml, frozen features). The student is
`roadwork distill --teacher <ensemble>` on the same photos (probe, 5 grouped folds, default
temperature 2 and mix 0.5). All three are scored on the held-out test photos by one `roadwork
evaluate` (paired intervals against the student), and timed on the request path (`predict_images`,
one photo at a time, nothing cached) over the first 40 test photos.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, run_measured, today  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = {"real-dev": ("real-train", "real-test"), "synthetic": ("synth-train", "synth-test")}


def latency_ms(bundle: Path, photos: list[Path]) -> float:
    from roadwork.serve.scorer import load_scorer

    predictor = load_scorer(bundle)
    predictor.warm_up()
    started = time.perf_counter()
    for photo in photos:
        predictor.predict_images([photo])
    return 1000 * (time.perf_counter() - started) / len(photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--dataset", choices=sorted(DATA), default="real-dev")
    args = parser.parse_args()
    train, test = (args.work / name for name in DATA[args.dataset])
    cache = args.work / "cache"
    teacher = args.work / f"ensemble-{args.dataset}" / "bundle"
    probe = args.work / f"{args.dataset}-probe" / "bundle"
    student = args.work / f"distilled-{args.dataset}"
    if not (student / "metrics.json").is_file():
        run_measured([*ROADWORK, "distill", "--teacher", str(teacher), "--data", str(train), "--out", str(student),
                      "--config", str(ROOT / "configs/cpu.yaml"), "--set", "backbone_training.mode=frozen",
                      "--cache-dir", str(cache)])
    report = args.work / f"distilled-{args.dataset}-report"
    if not (report / "metrics.json").is_file():
        run_measured([*ROADWORK, "evaluate", "--bundle", str(student / "bundle"), "--bundle", str(teacher), "--bundle",
                      str(probe), "--data", str(test), "--out", str(report), "--cache-dir", str(cache)])
    tested = json.loads((report / "metrics.json").read_text())
    photos = sorted((test / "images").glob("*.jpg"))[:40]
    names = ("student (distilled probe)", "teacher (ensemble)", "plain probe")
    lines = [f"machine: {machine()}; date: {today()}; command: python bench/bench_distill.py --work {args.work} "
             f"--dataset {args.dataset}", "",
             f"{args.dataset}: test photos {tested['n']}", "",
             "| model | test MCC [95% CI] | AUROC | minus the student, paired 95% | ms per photo (request path) |",
             "|---|---|---|---|---|"]
    models = [tested, *tested["compared"]]
    differences = [None, *tested["comparisons"]]
    for name, model, difference, bundle in zip(names, models, differences, (student / "bundle", teacher, probe)):
        gap = "" if difference is None else f"{difference['mcc_difference']:+.3f} {difference['ci95']}"
        lines.append(f"| {name} | {model['mcc']:.3f} {model['ci95']['mcc']} | {model['auroc']:.3f} | {gap} | "
                     f"{latency_ms(bundle, photos):.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
