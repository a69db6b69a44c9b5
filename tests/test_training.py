"""Training machinery: EMA, SophiaH, per-epoch MCC and loggers, GPS sampling in a run, and a resume after
SIGKILL that ends with the weights of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import BaseModel
from safetensors.torch import load_file

from roadwork.config import load_config
from roadwork.train.run import train

from conftest import orange_block_folder

HEAD = ["validation.groups=rows", "backbone_training.mode=frozen", "validation.folds=1", "model.type=multiview",
        "model.d_model=32", "model.heads=2", "model.attention_layers=1", "model.prune_k=null", "optim.lr=3e-3",
        "optim.batch_size=8", "optim.patience=50"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    base = tmp_path_factory.mktemp("training")
    return {"data": orange_block_folder(base / "data", 40, seed=0), "cache": base / "cache"}


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_ema_weights_are_what_validation_and_the_bundle_see(photos, tmp_path):
    out = tmp_path / "ema"
    train(
        str(photos["data"]),
        out,
        load_config(None, [*HEAD, "optim.epochs=4", "optim.ema=true", "optim.ema_decay=0.7"]),
        cache_dir=photos["cache"],
        progress=False,
    )
    best = _checkpoint(out / "splits" / "multiview-0" / "checkpoints" / "best.ckpt")
    averaged = {k.removeprefix("head."): v for k, v in best["state_dict"].items() if k.startswith("head.")}
    raw = {k.removeprefix("head."): v for k, v in best["current_model_state"].items() if k.startswith("head.")}
    bundle = load_file(str(out / "bundle" / "model.safetensors"))
    stored = {k.split(".", 2)[2]: v for k, v in bundle.items() if k.startswith("members.0.")}
    assert stored.keys() == averaged.keys()
    assert all(torch.equal(stored[k], averaged[k]) for k in averaged)
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)   # the average is not the raw weights


def test_sophia_estimates_the_hessian_and_mcc_is_logged_every_epoch_and_step(photos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sophia"
    overrides = [*HEAD, "optim.epochs=2", "optim.optimizer=sophia", "optim.sophia.hessian_period=1",
                 "trainer.step_metrics=true"]
    train(str(photos["data"]), out, load_config(None, overrides), cache_dir=photos["cache"], progress=False)
    folder = out / "splits" / "multiview-0"
    state = _checkpoint(folder / "checkpoints" / "last.ckpt")["optimizer_states"][0]["state"]
    moments = [s["hessian_moment"] for s in state.values()]
    # Without create_graph the Hutchinson product cannot be taken; with it the trained tensors have a
    # non-zero curvature estimate (a bias that a normalisation cancels has none).
    assert len(moments) > 50 and sum(bool(m.abs().sum() > 0) for m in moments) >= 0.95 * len(moments)
    with open(folder / "logs" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len([r for r in rows if r.get("train_mcc_epoch")]) == 2
    assert len([r for r in rows if r.get("val_mcc")]) == 2
    assert len([r for r in rows if r.get("train_mcc_step")]) >= 6   # 34 rows / 8 per batch, two epochs
    events = EventAccumulator(str(folder / "tensorboard" / "version_0")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val_served_mcc", "train_mcc_epoch", "train_loss_step"} <= tags
    assert any(t.startswith("lr-") for t in tags) and any("samples_per_sec" in t for t in tags)


def test_a_run_with_gps_targets_reports_and_weights_its_draws(photos, tmp_path):
    # The photos sit at latitudes 40..44, longitude 2; the target is latitude 40.
    (tmp_path / "targets.csv").write_text("latitude,longitude\n40.0,2.0\n40.01,2.0\n")
    config = load_config(None, [*HEAD, "optim.epochs=1", "sampling.regions=1", "sampling.samples_per_epoch=16"])
    config.sampling.target = str(tmp_path / "targets.csv")
    metrics = train(str(photos["data"]), tmp_path / "gps", config, cache_dir=photos["cache"], progress=False)
    report = metrics["sampling"]
    assert report["photos_within_50km"] == 8 and report["with_gps"] == 40
    # 8 photos at 0 km (weight 5), 8 at 111 km (2.5), 24 at 222 to 444 km (1).
    assert report["expected"]["within_50km"] == pytest.approx(40 / (40 + 20 + 24))
    with open(tmp_path / "gps" / "splits" / "multiview-0" / "logs" / "version_0" / "metrics.csv") as handle:
        steps = {int(r["step"]) for r in csv.DictReader(handle) if r.get("train_loss_epoch") or r.get("train_loss")}
    assert max(steps) == 1   # samples_per_epoch=16 at 8 per batch: two steps, not the 34 rows' five


ROADWORK = [sys.executable, "-m", "roadwork"]


def _run(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([*ROADWORK, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights(photos, tmp_path):
    args = ["train", "--data", str(photos["data"]), "--cache-dir", str(photos["cache"]), "--device", "cpu",
            "--epochs", "6", "--seed", "3"]
    # Small batches and metadata dropout: many steps per epoch, and random numbers that a resume
    # must draw again exactly as the uninterrupted run did.
    for override in [*HEAD, "optim.batch_size=2", "data.metadata_dropout=0.3", "model.dropout=0.2"]:
        args += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    whole = _run([*args, "--out", str(tmp_path / "whole")], env)
    assert whole.wait(timeout=600) == 0, whole.stderr.read().decode()

    killed = tmp_path / "killed"
    victim = _run([*args, "--out", str(killed)], env)
    checkpoint = killed / "splits" / "multiview-0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not checkpoint.is_file() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert _checkpoint(checkpoint)["epoch"] < 5 and not (killed / "bundle").exists()

    again = _run([*args, "--out", str(killed), "--resume"], env)
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()
    # The final weights (the last epoch's, raw and averaged alike) and the served head are those of
    # the run that was never killed; so are the schedule's position and the chosen epoch.
    whole_last = _checkpoint(tmp_path / "whole" / "splits" / "multiview-0" / "checkpoints" / "last.ckpt")
    resumed_last = _checkpoint(checkpoint)
    assert whole_last["epoch"] == resumed_last["epoch"] == 5
    assert whole_last["state_dict"].keys() == resumed_last["state_dict"].keys()
    for name, tensor in whole_last["state_dict"].items():
        assert torch.equal(tensor, resumed_last["state_dict"][name]), name
    assert [s["last_epoch"] for s in whole_last["lr_schedulers"]] == [
        s["last_epoch"] for s in resumed_last["lr_schedulers"]
    ]
    expected = load_file(str(tmp_path / "whole" / "bundle" / "model.safetensors"))
    resumed = load_file(str(killed / "bundle" / "model.safetensors"))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_config_files_load_layer_in_order_and_base_is_the_defaults():
    from roadwork.config import TrainConfig

    configs = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(configs / "base.yaml") == TrainConfig()   # base.yaml documents the real defaults

    def same_keys(written: dict, model: BaseModel, where: str) -> None:   # every setting, none missing
        assert set(written) == set(type(model).model_fields), where
        dumped = model.model_dump(mode="json")
        for key, value in written.items():
            if isinstance(getattr(model, key), BaseModel):
                same_keys(value, getattr(model, key), f"{where}{key}.")
            else:
                assert value == dumped[key], f"{where}{key}"

    same_keys(yaml.safe_load((configs / "base.yaml").read_text()), TrainConfig(), "")
    for path in sorted(configs.rglob("*.yaml")):
        if path.parent.name == "ensemble":   # ensemble specs: every member's configuration must load
            from roadwork.tune.ensemble import load_spec, member_configs

            assert len(member_configs(load_spec(path), [configs / "cpu.yaml"], [])) >= 2
        else:
            load_config([configs / "base.yaml", path])
    layered = load_config([configs / "cpu.yaml", configs / "backbones" / "dinov3-vith16plus.yaml"],
                          ["optim.epochs=3"])
    assert layered.model.d_model == 512 and layered.model.heads == 8   # the later file wins
    assert layered.data.backbone == "dinov3-vith16plus" and layered.optim.epochs == 3   # then --set
    assert load_config([configs / "backbones" / "dinov3-vith16plus.yaml", configs / "cpu.yaml"]).model.d_model == 256


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["frozen", "last_blocks"])
def test_two_ddp_processes_on_cpu_write_one_valid_bundle(mode, photos, tmp_path):
    """Lightning's DDP with gloo: two processes extract their shares, train on their shares of every
    epoch, and process 0 writes a bundle that loads and predicts like any other."""
    import json

    from roadwork.serve.predictor import Predictor

    out = tmp_path / mode
    args = ["train", "--data", str(photos["data"]), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--devices", "2", "--strategy", "ddp", "--epochs", "2",
            "--backbone-training", mode]
    for override in [*HEAD, "data.input_size=64", "backbone_training.epochs=1", "backbone_training.blocks=1",
                     "backbone_training.batch_size=8", "trainer.step_metrics=true"]:
        args += ["--set", override]
    run = subprocess.run([*ROADWORK, *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run.stdout + run.stderr).count("bundle written to") == 1   # process 0 reports; the other is quiet
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["extraction"]["processes"] == 2
    # Extraction was shared: one shard per process, each with a different half of the photos.
    frozen = [d for d in (tmp_path / "cache").iterdir() if d.is_dir() and "adapted" not in d.name]
    shards = [set(load_file(str(path))) for path in frozen[0].glob("shard-*.safetensors")]
    assert len(frozen) == 1 and len(shards) == 2 and not shards[0] & shards[1]
    assert len(shards[0]) == len(shards[1]) == 20
    assert metrics["backbone_training"]["mode"] == mode
    assert len(metrics["backbone_training"]["fits"]) == (1 if mode == "last_blocks" else 0)
    # Each process took half of every epoch: 34 rows at 8 per batch is 3 steps per process, not 5.
    with open(out / "splits" / "multiview-0" / "logs" / "version_0" / "metrics.csv") as handle:
        steps = {int(r["step"]) for r in csv.DictReader(handle) if r.get("train_loss_step")}
    assert max(steps) == 5   # 2 epochs x 3 steps, counted from 0
    predictor = Predictor.load(out / "bundle", device="cpu")
    images = sorted((photos["data"] / "img").glob("*.jpg"))[:4]
    scores = predictor.predict_images([p.read_bytes() for p in images])
    assert len(scores) == 4 and all(0.0 <= s.probability <= 1.0 for s in scores)


@pytest.mark.slow
def test_compiled_head_trains_and_saves_under_the_plain_names(photos, tmp_path):
    plain = tmp_path / "plain"
    train(str(photos["data"]), plain, load_config(None, [*HEAD, "optim.epochs=1"]), cache_dir=photos["cache"],
          progress=False)
    compiled = tmp_path / "compiled"
    train(str(photos["data"]), compiled, load_config(None, [*HEAD, "optim.epochs=1", "optim.compile=true"]),
          cache_dir=photos["cache"], progress=False)
    a = load_file(str(plain / "bundle" / "model.safetensors"))
    b = load_file(str(compiled / "bundle" / "model.safetensors"))
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    assert all(a[k].shape == b[k].shape for k in a)
    # (Not equal to the eager run's weights: the compiled kernels draw their own dropout masks.)
    from roadwork.serve.predictor import Predictor

    predictor = Predictor.load(compiled / "bundle", device="cpu")
    image = sorted((photos["data"] / "img").glob("*.jpg"))[0].read_bytes()
    assert 0.0 <= predictor.predict_images([image])[0].probability <= 1.0


def test_a_logger_that_is_not_installed_fails_before_any_work(photos, tmp_path, monkeypatch):
    from roadwork.config import ConfigError

    monkeypatch.setitem(sys.modules, "wandb", None)   # import wandb raises ImportError
    config = load_config(None, [*HEAD, "trainer.loggers=[csv, wandb]"])
    with pytest.raises(ConfigError, match="wandb is asked for but not installed"):
        train(str(photos["data"]), tmp_path / "run", config, cache_dir=tmp_path / "empty-cache", progress=False)
    assert not (tmp_path / "empty-cache").exists()   # nothing was extracted
