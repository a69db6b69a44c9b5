"""Nothing lost, nothing stuck: every command that writes refuses to destroy what is there, and hostile
configuration or bundle files fail fast with one line (the hostile-input probe's cases)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.serve.bundle import MANIFEST
from roadwork.serve.onnx import OnnxPredictor
from roadwork.serve.predictor import Predictor
from roadwork.serve.scorer import load_scorer

from conftest import write_folder

runner = CliRunner()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and "Traceback" not in result.output, result.output
    assert expected in " ".join(result.output.split()), result.output


def test_export_never_deletes_the_bundle_it_reads_nor_anything_else(probe_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(probe_bundle["bundle"], run / "bundle")
    (run / "metrics.json").write_text("{}")
    before = _snapshot(run)
    # The probe's case: --out is the run folder, whose bundle/ is the source.
    _refused(["export", "--bundle", str(run / "bundle"), "--out", str(run)], "holds the input")
    _refused(["export", "--bundle", str(run / "bundle"), "--out", str(run), "--overwrite"], "holds the input")
    mine = tmp_path / "mine"
    (mine / "bundle").mkdir(parents=True)
    (mine / "bundle" / "notes.txt").write_text("keep me")
    _refused(["export", "--bundle", str(run / "bundle"), "--out", str(mine)], "not empty")
    _refused(["export", "--bundle", str(run / "bundle"), "--out", str(mine), "--overwrite"], "not an ONNX export")
    assert _snapshot(run) == before and (mine / "bundle" / "notes.txt").read_text() == "keep me"
    Predictor.load(run / "bundle")   # still a working bundle

    out = tmp_path / "onnx"
    assert runner.invoke(app, ["export", "--bundle", str(run / "bundle"), "--out", str(out)]).exit_code == 0
    graph = out / "head-0.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")   # a damaged export: refused again, left as it is
    _refused(["export", "--bundle", str(run / "bundle"), "--out", str(out)], "--overwrite")
    assert graph.read_bytes().endswith(b"\0")
    assert runner.invoke(app, ["export", "--bundle", str(run / "bundle"), "--out", str(out),
                               "--overwrite"]).exit_code == 0
    assert isinstance(load_scorer(out), OnnxPredictor)   # replaced whole, and verified
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging folder left


def test_synth_refuses_an_existing_dataset_and_overwrite_replaces_it_whole(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["synth", str(data), "--n", "6", "--width", "64", "--height", "64"]).exit_code == 0
    before = _snapshot(data)
    _refused(["synth", str(data), "--n", "2", "--width", "64", "--height", "64"], "not empty")
    assert _snapshot(data) == before
    assert runner.invoke(app, ["synth", str(data), "--n", "2", "--width", "64", "--height", "64",
                               "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in (data / "images").iterdir()) == ["000000.jpg", "000001.jpg"]   # no orphans
    assert (data / "metadata.csv").read_text().count("\n") == 3


@pytest.fixture
def occupied(tmp_path) -> Path:
    folder = tmp_path / "occupied"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return folder


def test_every_writer_refuses_a_folder_with_content(probe_bundle, occupied, tmp_path):
    bundle, data = str(probe_bundle["bundle"]), str(probe_bundle["data"])
    spec = tmp_path / "spec.yaml"
    spec.write_text("members:\n  - name: a\n  - name: b\n")
    commands = [
        ["evaluate", "--bundle", bundle, "--data", data, "--out", str(occupied)],
        ["active", "--bundle", bundle, "--pool", data, "--budget", "2", "--out", str(occupied)],
        ["ensemble", "--config", str(spec), "--data", data, "--out", str(occupied)],
        ["distill", "--teacher", bundle, "--data", data, "--out", str(occupied)],
        ["train", "--data", data, "--out", str(occupied)],
    ]
    for args in commands:
        _refused(args, "not empty")
    _refused(["augment-preview", "--data", data, "--out", str(occupied / "precious.txt")], "already exists")
    _refused(["evaluate", "--bundle", bundle, "--data", data, "--out", str(probe_bundle["data"].parent),
              "--overwrite"], "holds the input")
    assert [p.name for p in occupied.iterdir()] == ["precious.txt"]
    assert (occupied / "precious.txt").read_text() == "keep me"


def test_evaluate_overwrite_replaces_the_report_whole(probe_bundle, tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "stale.txt").write_text("old")
    result = runner.invoke(app, ["evaluate", "--bundle", str(probe_bundle["bundle"]), "--data",
                                 str(probe_bundle["data"]), "--out", str(report), "--cache-dir",
                                 str(probe_bundle["cache"]), "--resamples", "100", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in report.iterdir()) == ["metrics.json", "predictions.csv", "report.html"]


def test_input_errors_leave_no_output_folder_behind(probe_bundle, tmp_path):
    # Two positives cannot make five folds: found after the features are extracted, when today's
    # `train` had long created its --out.
    few = write_folder(tmp_path / "few", [{"file_name": f"{i}.jpg", "label": int(i < 2)} for i in range(8)])
    missing = str(tmp_path / "no-such-data")
    runs = {
        "train": ["train", "--data", str(few), "--out", str(tmp_path / "run"), "--cache-dir",
                  str(tmp_path / "cache"), "--backbone-training", "frozen"],
        "train-missing": ["train", "--data", missing, "--out", str(tmp_path / "run2")],
        "evaluate": ["evaluate", "--bundle", str(probe_bundle["bundle"]), "--data", missing, "--out",
                     str(tmp_path / "report")],
        "ensemble": ["ensemble", "--config", str(tmp_path / "no-spec.yaml"), "--data", str(few), "--out",
                     str(tmp_path / "ensemble")],
    }
    for name, args in runs.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "few"]


def test_train_overwrite_starts_clean_and_resume_with_overwrite_is_refused(tmp_path, probe_bundle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "stale.txt").write_text("old run")
    data = str(probe_bundle["data"])
    _refused(["train", "--data", data, "--out", str(run), "--resume", "--overwrite"], "not both")
    result = runner.invoke(app, ["train", "--data", data, "--out", str(run), "--overwrite", "--cache-dir",
                                 str(probe_bundle["cache"]), "--backbone-training", "frozen", "--set",
                                 "model.type=probe", "--folds", "2", "--group-column", "rows"])
    assert result.exit_code == 0, result.output
    assert not (run / "stale.txt").exists() and (run / "bundle" / MANIFEST).is_file()


def _nested_aliases(levels: int) -> str:
    lines = ["unknown:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"  a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_that_expand_are_refused_before_validation_and_errors_stay_short(small_folder, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_nested_aliases(9))   # 9^10 strings once expanded
    started = time.perf_counter()
    _refused(["train", "--data", str(small_folder), "--out", str(tmp_path / "run"), "--config", str(bomb)],
             "aliases expand to more than")
    assert time.perf_counter() - started < 10
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(_nested_aliases(3))   # 6,561 strings: under the limit, still not a valid section
    result = runner.invoke(app, ["train", "--data", str(small_folder), "--out", str(tmp_path / "run"),
                                 "--config", str(smaller)])
    assert result.exit_code == 2 and "unknown" in result.output and len(result.output) < 1000, result.output[:2000]
    _refused(["train", "--data", str(small_folder), "--out", str(tmp_path / "run"), "--set",
              "model.d_model=" + "[" * 100_000], "nested too deeply")
    _refused(["train", "--data", str(small_folder), "--out", str(tmp_path / "run"), "--set", "model.d_model=&a [*a]"],
             "aliases expand")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["dev-zero", "nested", "fifo"])
def test_a_hostile_manifest_is_one_clear_error_fast(probe_bundle, tmp_path, kind):
    bundle = tmp_path / "bundle"
    shutil.copytree(probe_bundle["bundle"], bundle)
    (bundle / MANIFEST).unlink()
    if kind == "dev-zero":
        os.symlink("/dev/zero", bundle / MANIFEST)
    elif kind == "nested":
        (bundle / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    else:
        os.mkfifo(bundle / MANIFEST)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(
        runner.invoke(app, ["predict", "--bundle", str(bundle), str(probe_bundle["data"] / "img" / "0.jpg")])),
        daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading the manifest hangs"
    (result,) = results
    assert result.exit_code == 2 and result.output.startswith("error:"), result.output   # type: ignore[attr-defined]
    assert "unreadable manifest.json" in result.output and len(result.output) < 500   # type: ignore[attr-defined]
