"""Synthesis and extraction speed, cache reuse, and extraction memory as the dataset grows.

    python bench/bench_extract.py --sizes 1000 4000 --work bench/out

For each size: render `roadwork synth --seed 1` (ms per image), run `roadwork extract` with the
embedded backbone and the auto plan into an empty cache (images/s, views/s, peak RSS of the
process tree), then run it again (a cache hit). Prints markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROADWORK, machine, run_measured, today  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
    parser.add_argument("--work", type=Path, default=Path("bench/out"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}; date: {today()}")
    print("| images | synth ms/img | extract s | images/s | views/s | peak RSS MiB | cached rerun s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        data = args.work / f"synth-{n}"
        cache = args.work / f"cache-{n}"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        synth_s, _, _ = run_measured([*ROADWORK, "synth", str(data), "--n", str(n), "--seed", "1"])
        extract = [*ROADWORK, "extract", "--data", str(data), "--cache-dir", str(cache), "--device", "cpu",
                   "--workers", str(args.workers)]
        cold_s, peak_mib, out = run_measured(extract)
        cold = json.loads(out.strip().splitlines()[-1])
        warm_s, _, out = run_measured(extract)
        warm = json.loads(out.strip().splitlines()[-1])
        assert warm["extracted"] == 0 and warm["cached"] == n, warm
        print(f"| {n} | {1000 * synth_s / n:.1f} | {cold_s:.1f} | {cold['images_per_s']:.2f} | "
              f"{cold['views_per_s']:.1f} | {peak_mib:.0f} | {warm_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
