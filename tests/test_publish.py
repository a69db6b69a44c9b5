"""`roadwork publish`: the folder a StreetVision miner uploads (bundle, the network's model_card.json,
a README model card), checked offline, and the upload against a stand-in of the Hub client."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.data.sources import load_samples
from roadwork.errors import RoadworkError
from roadwork.serve.publish import model_card, upload, write_publication
from roadwork.serve.scorer import load_scorer

HOTKEY = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **options: object) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **options}))

    def upload_folder(self, **options: object) -> None:
        self.calls.append(("upload_folder", dict(options)))


def test_the_published_folder_holds_the_bundle_its_card_and_loads_like_the_bundle(probe_bundle, tmp_path):
    out = write_publication(probe_bundle["bundle"], tmp_path / "model", repo="miner/roadwork-lite", hotkey=HOTKEY,
                            version="1.2.3", now=1_765_000_000.7)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "bundle", "model_card.json"]
    card = json.loads((out / "model_card.json").read_text())
    assert card == {"model_name": "roadwork-lite", "version": "1.2.3", "submitted_by": HOTKEY,
                    "submission_time": 1_765_000_000, "description": card["description"]}
    manifest = json.loads((probe_bundle["bundle"] / "manifest.json").read_text())
    assert f"{manifest['metrics']['mcc']:.3f}" in card["description"]
    page = (out / "README.md").read_text()
    assert f"{manifest['metrics']['mcc']:.3f}" in page and "Intended use" in page and HOTKEY in page
    assert f"{manifest['data']['train']['n']} photos" in page.replace("\n", " ")

    # The downloaded repository folder answers as the bundle does (what the miner adapter's YAML names).
    samples = load_samples(str(probe_bundle["data"]))[:4]
    published, _ = load_scorer(out).predict_samples(samples, use_cache=False)
    original, _ = load_scorer(probe_bundle["bundle"]).predict_samples(samples, use_cache=False)
    assert published == original


@pytest.mark.parametrize(("field", "value", "message"), [
    ("repo", "no-owner", "OWNER/NAME"), ("hotkey", "0OIl" * 12, "SS58"), ("version", "1.2", "X.Y.Z")])
def test_bad_card_fields_fail_before_anything_is_written(probe_bundle, tmp_path, field, value, message):
    given = {"repo": "miner/model", "hotkey": HOTKEY, "version": "1.0.0", field: value}
    with pytest.raises(RoadworkError, match=message):
        write_publication(probe_bundle["bundle"], tmp_path / "model", **given)
    assert not (tmp_path / "model").exists()


def test_upload_creates_the_repository_then_sends_the_folder_in_one_commit(probe_bundle, tmp_path):
    out = write_publication(probe_bundle["bundle"], tmp_path / "model", repo="miner/model", hotkey=HOTKEY,
                            version="2.0.1")
    hub = FakeHub()
    upload(out, "miner/model", client=hub)
    assert hub.calls == [
        ("create_repo", {"repo_id": "miner/model", "repo_type": "model", "exist_ok": True, "private": False}),
        ("upload_folder", {"repo_id": "miner/model", "folder_path": str(out), "repo_type": "model",
                           "commit_message": "roadwork model 2.0.1"})]
    assert model_card(probe_bundle["bundle"], "miner/model", HOTKEY, "2.0.1", now=5)["submission_time"] == 5


def test_publish_dry_run_writes_the_folder_and_needs_out(probe_bundle, tmp_path):
    runner = CliRunner()
    base = ["publish", "--bundle", str(probe_bundle["bundle"]), "--repo", "miner/model", "--hotkey", HOTKEY,
            "--dry-run"]
    result = runner.invoke(app, base)
    assert result.exit_code == 2 and "give --out" in result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "model"), "--version", "0.3.0"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "model_card.json").read_text())["version"] == "0.3.0"
