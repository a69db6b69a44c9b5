"""Helpers shared by the benchmark scripts: machine description, timed CLI runs, result rows."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

ROADWORK = [sys.executable, "-m", "roadwork"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, no GPU" if not _cuda() else f"{cpu}, {_cuda()}"


def _cuda() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:
        return ""


def today() -> str:
    return dt.date.today().isoformat()


def run_measured(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command; return (seconds, peak RSS of its whole process tree in MiB, stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return time.perf_counter() - start, peak / 2**20, stdout


def cached_photos(data: str | Path, cache_dir: str | Path, progress: bool = False):
    """(samples, content keys, [views, dim] features) of DATA from the feature cache, extracting what is missing."""
    from roadwork.backbones.base import BackboneSpec, create_backbone
    from roadwork.data.sources import load_samples
    from roadwork.features.extract import extract_and_load
    from roadwork.features.source import BackboneSource

    samples = load_samples(str(data))
    store = BackboneSource(BackboneSpec("efficientnet-lite0", None, 224, 1280, "auto")).store(cache_dir)
    result, features = extract_and_load(samples, lambda: create_backbone("efficientnet-lite0"), "auto", store,
                                        progress=progress)
    good = [i for i, f in enumerate(features) if f is not None]
    return [samples[i] for i in good], [result.keys[i] for i in good], [features[i] for i in good]


def subset_folder(source: Path, rows: list[dict], target: Path) -> Path:
    """A dataset folder of some rows of ``source`` (images hard-linked, or copied across file systems)."""
    if (target / "metadata.csv").is_file():
        return target
    for row in rows:
        destination = target / row["file_name"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / row["file_name"], destination)
        except OSError:
            shutil.copy(source / row["file_name"], destination)
    with open(target / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def held_out_datasets(work: Path, real: Path, seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """(train, test) folders whose test photos come from groups training never saw: synthetic drives
    (`synth --seed 11` to train, `--seed 12` to test, 400 frames of 4-frame drives each) and real-dev
    (a seeded 70/30 split of its `group` column), created in ``work`` when missing."""
    for split, synth_seed in (("synth-train", 11), ("synth-test", 12)):
        if not (work / split / "metadata.csv").is_file():
            run_measured([*ROADWORK, "synth", str(work / split), "--n", "400", "--seed", str(synth_seed),
                          "--frames-per-drive", "4"])
    with open(real / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = sorted({r["group"] for r in rows})
    held = set(np.random.default_rng(seed).permutation(groups)[: round(0.3 * len(groups))].tolist())
    return {"synthetic": (work / "synth-train", work / "synth-test"),
            "real-dev": (subset_folder(real, [r for r in rows if r["group"] not in held], work / "real-train"),
                         subset_folder(real, [r for r in rows if r["group"] in held], work / "real-test"))}


def held_out_main(doc: str, script: str, bench: Callable[[str, Path, Path, Path, Path], list[str]]) -> None:
    """The command line of the benchmarks on ``held_out_datasets``: ``--work``, ``--real``, ``--only``;
    ``bench(name, train, test, work, cache)`` returns the lines printed for one dataset."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--real", type=Path, default=Path("../shared/data/real-dev"))
    parser.add_argument("--only", choices=["real-dev", "synthetic"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    datasets = held_out_datasets(args.work, args.real)
    print(f"machine: {machine()}; date: {today()}; command: python bench/{script} --work {args.work} "
          f"--real {args.real}" + (f" --only {args.only}" if args.only else ""), flush=True)
    for name, (train, test) in datasets.items():
        if args.only in (None, name):
            print("\n".join(bench(name, train, test, args.work, args.work / "cache")), flush=True)
