"""How well near-duplicate grouping recovers known groups, per similarity threshold.

    python bench/bench_groups.py --data DATA [--data DATA ...] --cache-dir CACHE

For a dataset with a known group column (synthetic drives, real photos), groups are rebuilt from
centred cosine similarity of the global-view features alone and compared with the truth: how many
groups are found, how many true groups are split apart (leakage that remains) and how many found
groups merge photos of different true groups (cost: coarser splits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cached_photos, machine, today  # noqa: E402
from roadwork.data.groups import find_group_column, group_samples  # noqa: E402

THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args()
    print(f"machine: {machine()}; date: {today()}; backbone efficientnet-lite0, auto views")
    print("\n| data | photos | true groups | threshold | groups found | true groups split | found groups mixing "
          "true groups | largest found |")
    print("|---|---|---|---|---|---|---|---|")
    for data in args.data:
        samples, keys, features = cached_photos(data, args.cache_dir)
        column = find_group_column(samples)
        truth = np.unique([s.extra.get(column) or f"row{i}" for i, s in enumerate(samples)], return_inverse=True)[1]
        global_view = torch.stack([f[0] for f in features])
        for threshold in THRESHOLDS:
            # The column is hidden: groups come from the features alone.
            found = group_samples([type(s)(s.file_name, s.label) for s in samples], keys, global_view,
                                  similarity=threshold)
            split = sum(len(set(found.ids[truth == g])) > 1 for g in np.unique(truth))
            mixing = sum(len(set(truth[found.ids == g])) > 1 for g in np.unique(found.ids))
            print(f"| {Path(data).name} | {len(samples)} | {truth.max() + 1} | {threshold} | {found.count} | {split} "
                  f"| {mixing} | {np.bincount(found.ids).max()} |", flush=True)


if __name__ == "__main__":
    main()
