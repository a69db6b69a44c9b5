"""Active learning: the criteria, near-duplicate filtering, the picks folder, and training on it."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.tune.active import combined_score, criteria, diverse_top

from conftest import orange_block_folder


def test_criteria_separate_doubt_from_disagreement():
    members = np.array([[0.5, 0.5], [0.1, 0.9], [0.95, 0.97], [0.02, 0.03]])
    values = criteria(members)
    assert values["boundary"][:2] == pytest.approx([1.0, 1.0])   # both sit on the cut on average
    assert values["uncertainty"][0] == pytest.approx(1.0) and values["uncertainty"][1] < 0.5
    assert values["disagreement"][1] > 0.5 and values["disagreement"][0] == pytest.approx(0.0)
    assert values["boundary"][2] < 0.1 and values["disagreement"][2] < 0.01
    single = criteria(np.array([[0.2], [0.6]]))
    assert np.all(single["disagreement"] == 0)


def test_combined_score_ranks_and_ignores_a_criterion_that_says_nothing():
    values = {"boundary": np.array([0.1, 0.9, 0.5]), "uncertainty": np.array([1.0, 2.0, 30.0]),
              "disagreement": np.zeros(3)}
    score = combined_score(values, {"boundary": 1.0, "uncertainty": 1.0, "disagreement": 5.0})
    assert score.tolist() == pytest.approx([0.0, 1.5, 1.5])   # ranks, not raw scales; disagreement left out
    assert combined_score(values, {"boundary": 1.0}).argmax() == 1


def test_diverse_top_skips_identical_and_near_duplicate_photos():
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.normal(size=(6, 32))).float()
    base[1] = base[0] + 0.01 * torch.randn(32)   # a near-duplicate of photo 0
    keys = ["a", "b", "c", "a", "e", "f"]          # photo 3 is the same file as photo 0
    assert diverse_top([0, 1, 3, 2, 4, 5], 3, base, keys, 0.8) == [0, 2, 4]
    assert diverse_top([0, 1, 3, 2, 4, 5], 3, base, keys, None) == [0, 1, 2]   # identical files still skipped


def test_active_picks_a_labelling_folder_that_train_accepts(probe_bundle, tmp_path):
    pool = orange_block_folder(tmp_path / "pool", 30, seed=21)
    with open(pool / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    for i in range(5):   # five exact copies of photo 0 under other names: at most one may be picked
        shutil.copy(pool / rows[0]["file_name"], pool / f"img/copy{i}.jpg")
        rows.append({**rows[0], "file_name": f"img/copy{i}.jpg"})
    truth = {r["file_name"]: r["label"] for r in rows}
    for row in rows:
        row["label"] = ""   # an unlabelled pool
    with open(pool / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "picks"
    result = CliRunner().invoke(app, ["active", "--bundle", str(probe_bundle["bundle"]), "--pool", str(pool),
                                      "--budget", "12", "--out", str(out), "--similarity", "0.99",
                                      "--cache-dir", str(probe_bundle["cache"]), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with open(out / "metadata.csv") as handle:
        picks = list(csv.DictReader(handle))
    assert len(picks) == 12 and all(p["label"] == "" for p in picks)
    assert all((out / p["file_name"]).read_bytes() == (pool / p["source_file"]).read_bytes() for p in picks)
    copies = {rows[0]["file_name"], *(f"img/copy{i}.jpg" for i in range(5))}
    assert sum(p["source_file"] in copies for p in picks) <= 1
    scores = [float(p["score"]) for p in picks]
    assert scores == sorted(scores, reverse=True)
    assert picks[0]["weather"] in ("rain", "fog", "") and "description" in picks[0]
    again = CliRunner().invoke(app, ["active", "--bundle", str(probe_bundle["bundle"]), "--pool", str(out),
                                     "--budget", "3", "--out", str(tmp_path / "again"), "--cache-dir",
                                     str(probe_bundle["cache"]), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    with open(tmp_path / "again" / "metadata.csv") as handle:
        header = next(csv.reader(handle))
        second = list(csv.DictReader(handle, fieldnames=header))
    assert len(header) == len(set(header)) and [p["rank"] for p in second] == ["1", "2", "3"]   # new scores win

    unlabelled = CliRunner().invoke(app, ["train", "--data", str(probe_bundle["data"]), "--add-data", str(out),
                                          "--out", str(tmp_path / "run0"), "--cache-dir", str(probe_bundle["cache"])])
    assert unlabelled.exit_code == 2 and "label must be 0 or 1" in unlabelled.output
    for pick in picks:
        pick["label"] = truth[pick["source_file"]]
    with open(out / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(picks[0]))
        writer.writeheader()
        writer.writerows(picks)
    result = CliRunner().invoke(app, ["train", "--data", str(probe_bundle["data"]), "--add-data", str(out),
                                      "--out", str(tmp_path / "run"), "--cache-dir", str(probe_bundle["cache"]),
                                      "--folds", "2", "--group-column", "rows", "--backbone-training", "frozen",
                                      "--set", "model.type=probe", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["groups"]["rows"] == 24 + 12
    with open(tmp_path / "run" / "validation_predictions.csv") as handle:
        names = {r["file_name"] for r in csv.DictReader(handle)}
    assert sum(name.startswith("picks/images/") for name in names) == 12


def test_active_refuses_weights_that_choose_nothing(probe_bundle, tmp_path):
    result = CliRunner().invoke(app, ["active", "--bundle", str(probe_bundle["bundle"]), "--pool",
                                      str(probe_bundle["data"]), "--budget", "3", "--out", str(tmp_path / "p"),
                                      "--weight", "boundary=0", "--weight", "uncertainty=0", "--weight",
                                      "disagreement=0"])
    assert result.exit_code == 2 and "non-zero weight" in result.output
    result = CliRunner().invoke(app, ["active", "--bundle", str(probe_bundle["bundle"]), "--pool",
                                      str(probe_bundle["data"]), "--budget", "3", "--out", str(tmp_path / "p"),
                                      "--weight", "novelty=1"])
    assert result.exit_code == 2 and "must be one of" in result.output
