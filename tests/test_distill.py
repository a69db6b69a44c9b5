"""Distillation: the target formula, and a student that follows its teacher rather than the labels."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.tune.distill import soft_targets


def test_soft_targets_mix_a_softened_teacher_with_the_labels():
    teacher, labels = np.array([0.9, 0.1, 0.6]), np.array([1.0, 1.0, 0.0])
    assert soft_targets(teacher, labels, 1.0, 1.0) == pytest.approx(teacher)
    assert soft_targets(teacher, labels, 1.0, 0.0) == pytest.approx(labels)
    softened = soft_targets(teacher, labels, 4.0, 1.0)
    assert np.all(np.abs(softened - 0.5) < np.abs(teacher - 0.5))   # a higher temperature pulls toward 0.5
    assert soft_targets(teacher, labels, 2.0, 0.5)[1] == pytest.approx(0.5 * (1 / (1 + 3.0)) + 0.5)


def test_the_student_learns_from_the_teacher_as_much_as_mix_says(probe_bundle, tmp_path):
    from roadwork.config import load_config
    from roadwork.train.run import train

    liar = tmp_path / "flipped"   # a teacher trained on inverted labels says the opposite of the truth
    liar.mkdir()
    with open(probe_bundle["data"] / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    shutil.copytree(probe_bundle["data"] / "img", liar / "img")
    with open(liar / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "label": 1 - int(r["label"])} for r in rows)
    settings = ["validation.groups=rows", "validation.folds=2", "model.type=probe", "backbone_training.mode=frozen"]
    train(str(liar), tmp_path / "teacher", load_config(None, settings), cache_dir=probe_bundle["cache"], progress=False)

    def student(mix: float) -> dict:
        out = tmp_path / f"student-{mix}"
        result = CliRunner().invoke(
            app,
            [
                "distill",
                "--teacher",
                str(tmp_path / "teacher" / "bundle"),
                "--data",
                str(probe_bundle["data"]),
                "--out",
                str(out),
                "--cache-dir",
                str(probe_bundle["cache"]),
                "--device",
                "cpu",
                "--set",
                "distill.mix=" + str(mix),
                "--set",
                "distill.temperature=1",
                *(f"--set={s}" for s in settings),
            ],
        )
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    from_teacher, from_labels = student(1.0), student(0.0)
    assert from_teacher["distillation"]["teacher_on_these_photos"]["mcc"] < -0.5
    assert from_teacher["distillation"]["teacher_trained_on_share"] == 1.0   # the same images, other labels
    assert from_labels["validation"]["auroc"] > 0.9
    assert from_teacher["validation"]["auroc"] < 0.2   # it learnt the teacher's inverted view
    assert from_teacher["chosen_head"] == "probe"
