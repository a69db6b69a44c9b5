"""End to end on a tiny dataset: train -> bundle -> load -> predict/evaluate, resume, tampering."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import matthews_corrcoef, roc_auc_score
from typer.testing import CliRunner

from roadwork.backbones.base import BackboneSpec
from roadwork.cli import app
from roadwork.config import ConfigError, load_config
from roadwork.data.sources import load_samples
from roadwork.features.extract import extract_features
from roadwork.features.source import BackboneSource
from roadwork.features.table import head_margins
from roadwork.serve.bundle import BundleError, load_bundle, save_bundle
from roadwork.serve.predictor import Predictor
from roadwork.train.run import train

from conftest import orange_block_folder

TINY = [
    "validation.groups=rows",
    "backbone_training.mode=frozen",
    "validation.folds=1",
    "model.type=multiview",
    "model.d_model=32",
    "model.heads=2",
    "model.attention_layers=1",
    "model.prune_k=null",
    "optim.epochs=8",
    "optim.lr=3e-3",
    "optim.batch_size=8",
    "optim.patience=50",
    "optim.ema_decay=0.8",
]   # about 40 steps in all: the default 0.99 would keep the first steps' weights


def _resave(bundle, path: Path) -> Path:
    from roadwork.config import TrainConfig

    keys = [f"{i:064x}" for i in range(3)]
    return save_bundle(path, head=bundle.head, head_config=bundle.head_config, config=TrainConfig(), vocab=bundle.vocab,
                       backbone=bundle.backbone, calibration=bundle.calibration, served=bundle.served,
                       metrics={}, data_summary={}, fingerprints=keys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    data = orange_block_folder(base / "train", 40, seed=0)
    test = orange_block_folder(base / "test", 16, seed=1)
    cache = base / "cache"
    metrics = train(str(data), base / "run", load_config(None, TINY), cache_dir=cache, progress=False)
    return {"base": base, "data": data, "test": test, "cache": cache, "run": base / "run", "metrics": metrics}


def test_train_writes_bundle_and_metrics(trained):
    run = trained["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    n_val = metrics["validation"]["n"]
    assert 5 <= n_val <= 7 and metrics["fits"]["multiview"][0]["epochs_run"] == 8
    assert metrics["extraction"]["extracted"] == 40 and metrics["chosen_head"] == "multiview"
    assert metrics["groups"]["groups"] == 40 and metrics["folds"] == 1
    low, high = metrics["validation"]["ci95"]["mcc"]
    assert low <= metrics["validation"]["mcc"] <= high
    evidence = metrics["validation"]["evidence"]   # one held-out set of about 6 single-photo groups
    assert evidence["groups"] == n_val == evidence["effective_groups"] and evidence["few_groups"]
    assert len(evidence["fold_mcc"]) == 1 and evidence["mcc_ci95_between_folds"] is None
    assert evidence["mcc_ci95_from"] == "group bootstrap"
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["backbone"]["name"] == "efficientnet-lite0" and manifest["backbone"]["views"] == "auto"
    assert manifest["vocabulary"]["fields"]["weather"] == ["fog", "rain"]
    assert manifest["head"]["d_model"] == 32 and manifest["decision_threshold"] == 0.5
    assert manifest["kind"] == "head" and manifest["members"] == 1 and manifest["served_metadata"] == "none"
    assert set(manifest["files"]) == {"model.safetensors", "fingerprints.safetensors", "feature-density.safetensors"}
    assert manifest["data"]["train"]["n"] == 40
    assert (run / "validation_predictions.csv").read_text().count("\n") == n_val + 1


def test_predictions_identical_before_and_after_saving(trained, tmp_path):
    bundle = load_bundle(trained["run"] / "bundle")
    samples = load_samples(trained["test"])
    predictor = Predictor(bundle)
    backbone = predictor.backbone()
    spec = BackboneSpec(backbone.name, None, backbone.input_size, backbone.feature_dim, "auto")
    store = BackboneSource(spec).store(trained["cache"])
    keys = extract_features(samples, backbone, "auto", store, num_workers=0, progress=False).keys
    loaded = store.load(keys)
    features = [loaded[k] for k in keys]
    before = predictor.probabilities_from_features([features], samples)
    _resave(bundle, tmp_path / "copy")
    after = Predictor.load(tmp_path / "copy").probabilities_from_features([features], samples)
    assert torch.equal(before, after)
    assert before.min() >= 0 and before.max() <= 1 and before.std() > 0


def test_predict_cli_from_raw_images_matches_cached_path(trained):
    runner = CliRunner()
    paths = [str(trained["test"] / f"img/{i}.jpg") for i in range(4)]
    raw = runner.invoke(
        app, ["predict", "--bundle", str(trained["run"] / "bundle"), "--no-cache", "--device", "cpu", *paths]
    )
    cached = runner.invoke(app, ["predict", "--bundle", str(trained["run"] / "bundle"), "--cache-dir",
                                 str(trained["cache"]), "--device", "cpu", *paths])
    assert raw.exit_code == 0 and cached.exit_code == 0, raw.output + cached.output
    raw_lines = [json.loads(line) for line in raw.stdout.splitlines()]
    cached_lines = [json.loads(line) for line in cached.stdout.splitlines()]
    assert [line["file"] for line in raw_lines] == paths
    for a, b in zip(raw_lines, cached_lines):
        assert a["roadwork"] == (a["probability"] > 0.5)
        assert a["probability"] == pytest.approx(b["probability"], abs=2e-3)  # float16 cache vs float32


def test_predict_reports_bad_files_and_exits_nonzero(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [str(bad), str(trained["test"] / "img/0.jpg"), str(tmp_path / "missing.jpg")]
    result = CliRunner().invoke(app, ["predict", "--bundle", str(trained["run"] / "bundle"), "--no-cache", "--device",
                                      "cpu", *paths])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1
    assert "not an image" in lines[0]["error"] and "probability" in lines[1] and "error" in lines[2]


def _evaluate(trained, data, out):
    """``roadwork evaluate`` of the trained bundle on DATA, from the feature cache."""
    return CliRunner().invoke(app, ["evaluate", "--bundle", str(trained["run"] / "bundle"), "--data", str(data),
                                    "--out", str(out), "--cache-dir", str(trained["cache"]), "--device", "cpu"])


def test_evaluate_metrics_agree_with_scikit_learn(trained, tmp_path):
    result = _evaluate(trained, trained["test"], tmp_path / "report")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    with open(tmp_path / "report" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    assert metrics["n"] == len(rows) == 16
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(labels, probs > 0.5), abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(np.mean(labels == (probs > 0.5)), abs=1e-6)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)
    assert "roadwork evaluation" in (tmp_path / "report" / "report.html").read_text()


def test_second_training_run_reuses_the_cache_without_building_the_backbone(trained, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was built although every feature is cached")

    monkeypatch.setattr(BackboneSource, "load", refuse)
    metrics = train(str(trained["data"]), tmp_path / "run2", load_config(None, [*TINY, "optim.epochs=1"]),
                    cache_dir=trained["cache"], progress=False)
    assert metrics["extraction"]["extracted"] == 0 and metrics["extraction"]["cached"] == 40


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    out = tmp_path / "resumable"
    train(
        str(trained["data"]),
        out,
        load_config(None, [*TINY, "optim.epochs=2"]),
        cache_dir=trained["cache"],
        progress=False,
    )
    # A finished split is kept as it is by --resume, whatever the loader's worker count ...
    kept = train(str(trained["data"]), out, load_config(None, [*TINY, "optim.epochs=2", "data.num_workers=1"]),
                 cache_dir=trained["cache"], progress=False, resume=True)
    assert kept["fits"]["multiview"] == [{"resumed": True}]
    # ... but not one made with another seed (another split): that is fitted again.
    reseeded = train(str(trained["data"]), tmp_path / "reseeded-copy", load_config(None, [*TINY, "optim.epochs=1"]),
                     cache_dir=trained["cache"], progress=False)
    assert "resumed" not in reseeded["fits"]["multiview"][0]
    again = train(
        str(trained["data"]),
        tmp_path / "reseeded-copy",
        load_config(None, [*TINY, "optim.epochs=1", "seed=5"]),
        cache_dir=trained["cache"],
        progress=False,
        resume=True,
    )
    assert "resumed" not in again["fits"]["multiview"][0]
    # ... and one killed before its head was saved continues from its last checkpoint, with the
    # epoch count its schedule was built for; another count is refused, not silently restarted.
    (out / "splits" / "multiview-0" / "head.safetensors").unlink()
    with pytest.raises(ConfigError, match="interrupted while training with optim.epochs=2, not 4"):
        train(str(trained["data"]), out, load_config(None, [*TINY, "optim.epochs=4"]), cache_dir=trained["cache"],
              progress=False, resume=True)
    metrics = train(str(trained["data"]), out, load_config(None, [*TINY, "optim.epochs=2"]), cache_dir=trained["cache"],
                    progress=False, resume=True)
    assert metrics["fits"]["multiview"][0]["epochs_run"] == 2
    log = out / "splits" / "multiview-0" / "logs" / "version_1" / "metrics.csv"   # absent: nothing was logged
    assert not log.exists() or not [row for row in csv.DictReader(log.open()) if row.get("train_loss")]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:-1] + b"\0"),
            "SHA-256",
        ),
        (lambda b: (b / "model.safetensors").unlink(), "missing file"),
        (lambda b: (b / "manifest.json").write_text("{"), "unreadable"),
        (lambda b: (b / "manifest.json").unlink(), "not a bundle"),
    ],
    ids=["weights-modified", "weights-missing", "manifest-corrupt", "manifest-missing"],
)
def test_tampered_bundle_is_rejected(trained, tmp_path, tamper, message):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained["run"] / "bundle", copy)
    tamper(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["calibration"].update(margin_threshold=5.0), "manifest.json was modified"),
        (lambda m: m["backbone"].update(views="seed12"), "manifest.json was modified"),
        (lambda m: m["head"].update(d_model=64), "manifest.json was modified"),
    ],
    ids=["calibration", "view-plan", "config"],
)
def test_any_manifest_edit_is_rejected(trained, tmp_path, edit, message):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(trained["run"] / "bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
    result = CliRunner().invoke(app, ["predict", "--bundle", str(copy), str(trained["test"] / "img/0.jpg")])
    assert result.exit_code == 2 and "was modified" in result.output


def test_resigned_manifest_that_does_not_fit_the_weights_is_rejected(trained, tmp_path):
    import shutil

    from roadwork.serve.bundle import manifest_digest

    copy = tmp_path / "bundle"
    shutil.copytree(trained["run"] / "bundle", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["head"]["d_model"] = 64
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(copy)


def test_bundle_folder_is_readable_by_others(trained, tmp_path):
    import os
    import stat

    bundle = load_bundle(trained["run"] / "bundle")
    old = os.umask(0o022)
    try:
        _resave(bundle, tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b" / "model.safetensors").stat().st_mode) == 0o644


def test_the_bundle_serves_what_training_measured(trained):
    """Validation probabilities written by training equal the reloaded bundle's on the same images."""
    with open(trained["run"] / "validation_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_name = {s.file_name: s for s in load_samples(trained["data"])}
    samples = [by_name[r["file_name"]] for r in rows]
    probs, failures = Predictor.load(trained["run"] / "bundle").predict_samples(samples, cache_dir=trained["cache"])
    assert failures == {} and len(rows) == trained["metrics"]["validation"]["n"]
    assert np.allclose(probs, [float(r["probability"]) for r in rows], atol=2e-6)
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    labels = np.array([int(r["label"]) for r in rows])
    assert metrics["validation"]["mcc"] == pytest.approx(matthews_corrcoef(labels, np.array(probs) > 0.5), abs=1e-6)
    assert set(metrics["validation_with_metadata"]) <= set(metrics["validation"])


def test_the_head_learns(trained, tmp_path):
    result = _evaluate(trained, trained["test"], tmp_path / "r")
    test = json.loads(result.stdout.strip().splitlines()[-1])
    assert test["auroc"] > 0.9 and test["mcc"] > 0.5


def test_evaluate_on_a_single_class_set(trained, tmp_path):
    import shutil

    only = tmp_path / "positives"
    (only / "img").mkdir(parents=True)
    with open(trained["test"] / "metadata.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "1"]
    for row in rows:
        shutil.copy(trained["test"] / row["file_name"], only / row["file_name"])
    with open(only / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = _evaluate(trained, only, tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "AUROC n/a" in result.output and json.loads((tmp_path / "r" / "metrics.json").read_text())["auroc"] is None


def test_separate_validation_set_and_one_class_refusal(trained, tmp_path):
    metrics = train(str(trained["data"]), tmp_path / "v", load_config(None, [*TINY, "optim.epochs=1"]),
                    val_data=str(trained["test"]), cache_dir=trained["cache"], progress=False)
    assert metrics["validation"]["n"] == 16
    from roadwork.data.records import DatasetError

    one_class = tmp_path / "one"
    (one_class / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(one_class / "img" / "a.jpg")
    (one_class / "metadata.csv").write_text("file_name,label\nimg/a.jpg,1\n")
    with pytest.raises(DatasetError, match="validation data needs both classes"):
        train(str(trained["data"]), tmp_path / "w", load_config(None, TINY), val_data=str(one_class),
              cache_dir=tmp_path / "empty-cache", progress=False)
    assert not (tmp_path / "empty-cache").exists()  # refused before any extraction


def test_invalid_config_fails_at_start_naming_the_key(trained, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(trained["data"]), "--out", str(tmp_path / "x"),
                                      "--set", "model.d_model=banana"])
    assert result.exit_code == 2 and "model.d_model" in result.output
    result = CliRunner().invoke(app, ["train", "--data", str(trained["data"]), "--out", str(tmp_path / "x"),
                                      "--set", "optim.lr=-1"])
    assert result.exit_code == 2 and "optim.lr" in result.output
    result = CliRunner().invoke(app, ["train", "--data", str(trained["data"]), "--out", str(tmp_path / "x"),
                                      "--set", "model.no_such_key=1"])
    assert result.exit_code == 2 and "model.no_such_key" in result.output
    assert not (tmp_path / "x").exists()


def test_fully_cached_evaluation_never_loads_the_backbone(trained, tmp_path, monkeypatch):
    Predictor.load(trained["run"] / "bundle").predict_samples(load_samples(trained["test"]), cache_dir=trained["cache"])

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was loaded although every feature is cached")

    monkeypatch.setattr(BackboneSource, "load", refuse)
    probs, failures = Predictor.load(trained["run"] / "bundle").predict_samples(
        load_samples(trained["test"]), cache_dir=trained["cache"])
    assert failures == {} and all(p is not None for p in probs)


def _rewrite(source: Path, target: Path, edit) -> Path:
    """A copy of a dataset folder (images linked) whose metadata rows pass through ``edit``."""
    import os

    (target / "img").mkdir(parents=True)
    with open(source / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        os.link(source / row["file_name"], target / row["file_name"])
    rows = edit(rows)
    with open(target / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def test_twins_are_grouped_and_a_twin_with_the_other_label_is_refused(trained, tmp_path):
    twice = _rewrite(trained["data"], tmp_path / "twice", lambda rows: rows + [dict(r) for r in rows])
    metrics = train(str(twice), tmp_path / "run", load_config(None, [*TINY, "optim.epochs=1"]),
                    cache_dir=trained["cache"], progress=False)
    assert metrics["groups"]["identical_files_grouped"] == 40 and metrics["groups"]["groups"] == 40
    with open(tmp_path / "run" / "validation_predictions.csv") as handle:
        names = [row["file_name"] for row in csv.DictReader(handle)]
    assert names and all(names.count(name) == 2 for name in names)  # both twins held out, never one
    from roadwork.data.records import DatasetError

    flipped = _rewrite(trained["data"], tmp_path / "flipped",
                       lambda rows: rows + [{**rows[3], "label": str(1 - int(rows[3]["label"]))}])
    with pytest.raises(DatasetError, match=r"img/3\.jpg \(label 1\), img/3\.jpg \(label 0\)"):
        train(str(flipped), tmp_path / "x", load_config(None, TINY), cache_dir=tmp_path / "fresh-cache", progress=False)
    assert not (tmp_path / "fresh-cache").exists()  # refused before extraction


def test_kfold_heads_never_see_the_rows_they_are_measured_on(trained, tmp_path, monkeypatch):
    import roadwork.train.run as run_module

    seen: list[tuple[list[str], list[str]]] = []
    real_fit = run_module.fit_multiview

    def recording_fit(config, head_config, dim, vocab, train_table, select_table, *args, **kwargs):
        seen.append((train_table.file_names, select_table.file_names))
        return real_fit(config, head_config, dim, vocab, train_table, select_table, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit_multiview", recording_fit)
    config = load_config(None, [*TINY, "optim.epochs=1", "validation.folds=4", "validation.serve=folds",
                                "model.type=auto"])
    metrics = train(str(trained["data"]), tmp_path / "run", config, cache_dir=trained["cache"], progress=False)
    everything = {f"img/{i}.jpg" for i in range(40)}
    held_out = []
    with open(tmp_path / "run" / "validation_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    for fold, (fit_names, select_names) in enumerate(seen):
        assert not set(fit_names) & set(select_names)
        held_out += sorted(everything - set(fit_names) - set(select_names))
        assert {r["file_name"] for r in rows if r["fold"] == str(fold)} == everything - set(fit_names) - set(
            select_names
        )
    assert len(seen) == 4 and sorted(held_out) == sorted(everything)  # each photo held out exactly once
    assert metrics["folds"] == 4 and metrics["validation"]["n"] == 40 and set(metrics["candidates"]) == {
        "probe", "multiview"}
    assert metrics["calibration"]["fitted_on"] == 40
    evidence, interval = metrics["validation"]["evidence"], metrics["validation"]["ci95"]["mcc"]
    assert len(evidence["fold_mcc"]) == 4 and evidence["groups"] == 40
    for part in (evidence["mcc_ci95_group_bootstrap"], evidence["mcc_ci95_between_folds"]):
        assert interval[0] <= part[0] and part[1] <= interval[1]   # the reported interval covers both
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["kind"] == "fold_ensemble" and manifest["members"] == 4
    assert manifest["head"]["type"] == metrics["chosen_head"]
    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert len(bundle.head.members) == 4
    test_samples = load_samples(trained["test"])
    probs, _ = Predictor(bundle).predict_samples(test_samples, cache_dir=trained["cache"])
    store = BackboneSource(BackboneSpec("efficientnet-lite0", None, 224, 1280, "auto")).store(trained["cache"])
    keys = extract_features(test_samples, lambda: None, "auto", store, progress=False).keys
    loaded = store.load(keys)
    from roadwork.features.table import FeatureTable

    table = FeatureTable.build(test_samples, [loaded[k] for k in keys], bundle.vocab, None).image_only()
    each = [bundle.calibration(head_margins(member, table)) for member in bundle.head.members]
    assert np.allclose(probs, torch.stack(each).mean(dim=0).numpy(), atol=1e-6)  # mean of calibrated members


def test_vocabulary_comes_from_training_rows_and_leakage_is_reported(trained, tmp_path):
    snowy = _rewrite(trained["test"], tmp_path / "snowy", lambda rows: [{**r, "weather": "snow"} for r in rows])
    metrics = train(str(trained["data"]), tmp_path / "run", load_config(None, [*TINY, "optim.epochs=1"]),
                    val_data=str(snowy), cache_dir=trained["cache"], progress=False)
    vocabulary = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())["vocabulary"]
    assert vocabulary["fields"]["weather"] == ["fog", "rain"]
    assert metrics["leakage_with_val_data"]["identical"] == 0
    leaky = train(str(trained["data"]), tmp_path / "leaky", load_config(None, [*TINY, "optim.epochs=1"]),
                  val_data=str(trained["data"]), cache_dir=trained["cache"], progress=False)
    assert leaky["leakage_with_val_data"]["identical"] == 40
    result = CliRunner().invoke(app, ["evaluate", "--bundle", str(trained["run"] / "bundle"), "--data",
                                      str(trained["data"]), "--out", str(tmp_path / "r"), "--cache-dir",
                                      str(trained["cache"]), "--device", "cpu"])
    assert result.exit_code == 0 and "40 of these photos were in its training data" in result.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["seen_in_training"] == 40


@pytest.mark.parametrize("selection", ["served_mcc", "served_mcc_log_loss"])
def test_the_checkpoint_kept_is_the_best_by_the_served_criterion(tmp_path, selection):
    """Early stopping and the kept checkpoint follow ``val_selection``: the image-only margins cut where
    the served calibration would cut them (not MCC at margin 0), with their log-loss breaking near-ties
    when ``optim.selection`` asks."""
    from roadwork.data.records import Sample
    from roadwork.features.metadata import MetadataVocab
    from roadwork.features.table import FeatureTable, head_margins
    from roadwork.serve.calibration import selection_score
    from roadwork.train.fit import fit_multiview

    torch.manual_seed(0)
    n, dim = 160, 24
    labels = torch.randint(0, 2, (n,))
    features = torch.randn(n, 3, dim) + 0.6 * labels.view(-1, 1, 1).float() * torch.randn(1, 1, dim)
    samples = [Sample(f"{i}.jpg", int(labels[i]), weather="rain" if i % 2 else None) for i in range(n)]
    vocab = MetadataVocab.from_samples(samples)
    table = lambda rows: FeatureTable.build([samples[i] for i in rows], list(features[rows]), vocab, None)  # noqa: E731
    config = load_config(None, [*TINY, "optim.epochs=6", "model.text=false", "optim.lr=1e-3",
                                f"optim.selection={selection}"])
    head, info = fit_multiview(config, config.model, dim, vocab, table(range(100)), table(range(100, n)), tmp_path,
                               device="cpu", resume=False, progress=False)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val_selection")]
    served, chosen = [float(r["val_served_mcc"]) for r in rows], [float(r["val_selection"]) for r in rows]
    assert len(chosen) == 6 and len(set(served)) > 1 and info["best_val_selection"] == pytest.approx(max(chosen))
    if selection == "served_mcc":
        assert chosen == served
    else:   # the log-loss takes at most 0.01 off, and takes something off
        assert all(0 < s - c <= 0.01 for s, c in zip(served, chosen))
    held = table(range(100, n)).image_only()
    kept = served[chosen.index(max(chosen))]
    assert selection_score(head_margins(head, held).numpy(), held.labels.numpy()) == pytest.approx(kept, abs=1e-5)


def test_log_loss_breaks_ties_of_the_served_mcc_and_nothing_else():
    from roadwork.train.module import checkpoint_score

    labels = np.array([0, 0, 1, 1])
    barely, clearly = np.array([-0.1, -0.1, 0.1, 0.1]), np.array([-4.0, -4.0, 4.0, 4.0])
    rule = "served_mcc_log_loss"
    assert checkpoint_score(1.0, clearly, labels, rule) > checkpoint_score(1.0, barely, labels, rule)
    assert checkpoint_score(1.0, barely, labels, "served_mcc") == checkpoint_score(1.0, clearly, labels, "served_mcc")
    # A better served MCC wins however the margins are spread: the log-loss share is capped.
    assert checkpoint_score(0.98, -clearly, labels, rule) > checkpoint_score(0.96, clearly, labels, rule)


def test_feature_bank_extracts_augmented_copies_once_and_apart(trained, tmp_path):
    from roadwork.config import ConfigError
    from roadwork.data.augment import SeededCopy

    overrides = [*TINY, "optim.epochs=2", "data.augment=heavy", "data.augment_copies=2"]
    metrics = train(str(trained["data"]), tmp_path / "bank", load_config(None, overrides), cache_dir=trained["cache"],
                    progress=False)
    assert metrics["extraction"]["extracted"] == 0  # the plain features were cached already
    namespaces = sorted(p.name for p in trained["cache"].iterdir() if p.is_dir())
    assert sum("-aug1-heavy-" in n for n in namespaces) == 1 and sum("-aug2-heavy-" in n for n in namespaces) == 1
    samples = load_samples(trained["data"])
    plain = BackboneSource(BackboneSpec("efficientnet-lite0", None, 224, 1280, "auto")).store(trained["cache"])
    source = BackboneSource(BackboneSpec("efficientnet-lite0", None, 224, 1280, "auto"))
    copy = source.store(trained["cache"], variant=SeededCopy("heavy", 1).variant)
    keys = extract_features(samples, lambda: None, "auto", plain, progress=False).keys
    assert len(copy) == len(set(keys)) and not copy.missing(keys)
    first = keys[0]
    assert not torch.equal(plain.load([first])[first], copy.load([first])[first])  # never the plain features
    again = train(str(trained["data"]), tmp_path / "bank2", load_config(None, overrides), cache_dir=trained["cache"],
                  progress=False)
    assert again["validation"]["n"] == metrics["validation"]["n"]
    with pytest.raises(ConfigError, match="augment_copies > 0 needs an augmentation preset"):
        load_config(None, ["data.augment_copies=2"])


def test_feature_bank_table_draws_a_version_per_row_each_epoch():
    from roadwork.data.records import Sample
    from roadwork.features.metadata import MetadataVocab
    from roadwork.features.table import FeatureTable
    from roadwork.train.data import FeatureDataModule

    samples = [Sample(f"{i}.jpg", i % 2) for i in range(64)]
    clean = [torch.zeros(2, 4) for _ in samples]
    copies = [[torch.full((2, 4), float(c)) for _ in samples] for c in (1, 2)]
    table = FeatureTable.build(samples, clean, MetadataVocab.from_samples(samples), None, copies)
    stacked, rows = table.all_versions()
    assert stacked.shape == (3 * 64, 2, 4) and rows.tolist() == list(range(64)) * 3
    module = FeatureDataModule(table, table, batch_size=64, seed=0)

    class Epoch:
        current_epoch = 0

    module.trainer = Epoch()
    shown = []
    for epoch in range(2):
        Epoch.current_epoch = epoch
        batch = next(iter(module.train_dataloader()))
        shown.append(batch.features[:, 0, 0])
    assert set(shown[0].tolist()) == {0.0, 1.0, 2.0}  # the photo itself and both copies appear
    assert not torch.equal(table.choice, torch.zeros(64, dtype=torch.long))
    assert not torch.equal(shown[0], shown[1])  # a new draw each epoch
    assert torch.equal(table.image_only().alternatives, table.alternatives)
