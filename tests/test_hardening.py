"""Failures a hostile-input probe found: each is one `error:` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.serve.bundle import FINGERPRINTS, MANIFEST, WEIGHTS, manifest_digest
from roadwork.storage import sha256_file

from conftest import jpeg_bytes, write_folder

runner = CliRunner()


def _one_error_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.startswith("error:"), result.output
    assert expected in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output   # wrapped, but one message


def _resigned(bundle, edit):
    """A copy of ``bundle`` with ``edit(folder, manifest)`` applied and every hash recomputed: only
    the content checks, not the integrity checks, can catch it."""
    def apply(target):
        shutil.copytree(bundle, target)
        manifest = json.loads((target / MANIFEST).read_text())
        edit(target, manifest)
        if isinstance(manifest.get("files"), dict):
            manifest["files"] = {n: sha256_file(target / n) for n in manifest["files"]}
        manifest["manifest_sha256"] = manifest_digest(manifest)
        (target / MANIFEST).write_text(json.dumps(manifest))
        return target
    return apply


def _garbage(name):
    def edit(folder, manifest):
        (folder / name).write_bytes(b"\x00garbage" * 10)
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_garbage(WEIGHTS), "do not fit together"),
    (_garbage(FINGERPRINTS), "do not fit together"),
    (lambda folder, m: m.update(calibration="abc"), "calibration must be an object"),
    (lambda folder, m: m["calibration"].update(temperature="hot"), "do not fit together"),
    (lambda folder, m: m["backbone"].update(feature_dim=7), "do not fit together"),
    (lambda folder, m: m.update(files=["model.safetensors"]), "must map file names"),
], ids=["garbage-weights", "garbage-fingerprints", "calibration-type", "temperature-type", "backbone-mismatch",
        "files-type"])
def test_resigned_broken_bundles_are_one_clear_error(probe_bundle, tmp_path, edit, expected):
    copy = _resigned(probe_bundle["bundle"], edit)(tmp_path / "bundle")
    image = probe_bundle["data"] / "img" / "0.jpg"
    _one_error_line(["predict", "--bundle", str(copy), str(image)], expected)


@pytest.mark.parametrize("content", ["[1, 2, 3]", "null"])
def test_manifest_that_is_not_an_object(probe_bundle, tmp_path, content):
    copy = tmp_path / "bundle"
    shutil.copytree(probe_bundle["bundle"], copy)
    (copy / MANIFEST).write_text(content)
    _one_error_line(["predict", "--bundle", str(copy), str(probe_bundle["data"] / "img" / "0.jpg")],
                    "must hold a JSON object")


def test_dataset_and_path_failures_are_one_clear_error(probe_bundle, tmp_path):
    non_utf8 = tmp_path / "latin"
    non_utf8.mkdir()
    (non_utf8 / "metadata.csv").write_bytes("file_name,label,description\na.jpg,1,Baustelle Straße\n".encode("latin-1"))
    (non_utf8 / "a.jpg").write_bytes(jpeg_bytes())
    _one_error_line(["extract", "--data", str(non_utf8), "--cache-dir", str(tmp_path / "c")], "not UTF-8")

    long_cell = write_folder(tmp_path / "long", [{"file_name": "a.jpg", "label": 1, "description": "x" * 200_000},
                                                 {"file_name": "b.jpg", "label": 0, "description": ""}])
    result = runner.invoke(app, ["extract", "--data", str(long_cell), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output   # a long description is data, not an error
    (tmp_path / "open-quote").mkdir()
    (tmp_path / "open-quote" / "metadata.csv").write_text('file_name,label\n"a.jpg,1\n' + "b" * 1_100_000 + "\n")
    _one_error_line(["extract", "--data", str(tmp_path / "open-quote"), "--cache-dir", str(tmp_path / "c")],
                    "unreadable CSV")

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    data = str(probe_bundle["data"])
    _one_error_line(["train", "--data", data, "--out", str(a_file)], "is a file, not a folder")
    _one_error_line(["evaluate", "--bundle", str(probe_bundle["bundle"]), "--data", data, "--out", str(a_file)],
                    "is a file, not a folder")
    _one_error_line(["extract", "--data", data, "--cache-dir", str(a_file)], "is a file, not a folder")
    _one_error_line(["extract", "--data", data, "--cache-dir", str(tmp_path / "c"), "--backbone", "hf:/no/such/model"],
                    "local model folder not found")
    image = str(probe_bundle["data"] / "img" / "0.jpg")
    _one_error_line(["predict", "--bundle", str(probe_bundle["bundle"]), "--device", "banana", image], "unknown device")
    _one_error_line(["predict", "--bundle", str(probe_bundle["bundle"]), "--device", "cuda:7", image], "cuda")


def test_predict_reports_fifos_huge_files_and_empty_files_per_image(probe_bundle, tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(101 * 2**20)   # sparse: no disk used
    good = probe_bundle["data"] / "img" / "0.jpg"
    result = runner.invoke(app, ["predict", "--bundle", str(probe_bundle["bundle"]), "--no-cache", str(fifo),
                                 str(empty), str(huge), str(good)])
    lines = [json.loads(line) for line in result.output.strip().splitlines()]
    assert result.exit_code == 1 and len(lines) == 4
    assert "not a regular file" in lines[0]["error"]
    assert "empty image" in lines[1]["error"]
    assert "exceeds the limit" in lines[2]["error"]
    assert 0.0 <= lines[3]["probability"] <= 1.0
