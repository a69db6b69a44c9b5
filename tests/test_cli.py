"""The command line: synth and extract end to end, clean errors, and help for every option."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from roadwork.cli import app

runner = CliRunner()


def test_synth_then_extract_then_cache_hit(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    result = runner.invoke(app, ["synth", str(data), "--n", "6", "--seed", "3", "--width", "320", "--height", "240"])
    assert result.exit_code == 0, result.output
    assert len(list((data / "images").glob("*.jpg"))) == 6
    assert (data / "metadata.csv").read_text().count("\n") == 7

    args = ["extract", "--data", str(data), "--cache-dir", str(cache), "--device", "cpu", "--workers", "0"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["images"], summary["extracted"], summary["cached"], summary["failed"]) == (6, 6, 0, 0)
    assert summary["views"] == 6  # 320x240 is close to the 224 input: the auto plan keeps one view
    second = json.loads(runner.invoke(app, args).stdout.strip().splitlines()[-1])
    assert (second["extracted"], second["cached"]) == (0, 6)


def test_input_errors_are_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "metadata.csv").write_text("name,label\nx.jpg,1\n")
    result = runner.invoke(app, ["extract", "--data", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "error:" in result.output and "file_name" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["extract", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "dataset not found" in result.output
    good = tmp_path / "good"
    assert runner.invoke(app, ["synth", str(good), "--n", "2", "--width", "64", "--height", "64"]).exit_code == 0
    result = runner.invoke(app, ["extract", "--data", str(good), "--backbone", "resnet-9000"])
    assert result.exit_code == 2 and "unknown backbone 'resnet-9000'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["train", "--data", str(good), "--out", str(tmp_path / "run"),
                                 "--backbone-training", "half"])
    assert result.exit_code == 2 and "backbone_training.mode" in result.output and "Traceback" not in result.output


def test_every_option_of_every_command_is_explained():
    commands = typer.main.get_command(app).commands
    assert {"synth", "extract", "train", "evaluate", "predict", "serve", "export", "ensemble", "distill",
            "active"} <= set(commands)
    leaves = {f"{name} {sub}": c for name, group in commands.items()
              for sub, c in getattr(group, "commands", {}).items()}   # the commands of groups (detector, vlm)
    assert {"detector train", "vlm zero-shot"} <= set(leaves)
    for name, command in {**commands, **leaves}.items():
        assert command.help, name
        undocumented = [p.name for p in command.params if not getattr(p, "help", None) and p.name != "help"]
        assert undocumented == [], name
