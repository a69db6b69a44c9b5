"""Feature store and streaming extraction: reuse, crash recovery, corruption, bad images."""

from __future__ import annotations

import json

import pytest
import torch

from roadwork.backbones.base import BackboneSpec
from roadwork.data.sources import load_samples
from roadwork.features.extract import content_keys, extract_features
from roadwork.features.source import BackboneSource
from roadwork.features.store import FeatureStore, namespace_for

from conftest import jpeg_bytes, write_folder


class FakeBackbone(torch.nn.Module):
    """Deterministic stand-in: per-channel means and maxima of each view."""

    name = "fake"
    input_size = 32
    feature_dim = 6
    device = torch.device("cpu")

    def __init__(self, fail_after_calls: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def features(self, views: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise RuntimeError("simulated crash")
        views = views.float() / 255
        return torch.cat([views.mean(dim=(2, 3)), views.amax(dim=(2, 3))], dim=1)


@pytest.fixture
def dataset(tmp_path):
    rows = [{"file_name": f"{i}.jpg", "label": i % 2} for i in range(10)]
    images = {f"{i}.jpg": jpeg_bytes(100 if i % 2 else 40, 60, seed=i) for i in range(10)}
    return load_samples(write_folder(tmp_path / "ds", rows, images))


def _run(samples, store, backbone=None, **kwargs):
    return extract_features(samples, backbone or FakeBackbone(), "auto", store, images_per_batch=3, num_workers=0,
                            progress=False, **kwargs)


def test_second_run_is_a_cache_hit_with_identical_features(dataset, tmp_path):
    store = FeatureStore(tmp_path / "cache", "ns")
    first = _run(dataset, store)
    assert (first.extracted, first.cached, first.failures) == (10, 0, {})
    assert first.views == sum(6 if i % 2 else 1 for i in range(10))  # auto: tiles only for the larger photos
    features = store.load(first.keys)
    assert features[first.keys[1]].shape == (6, 6) and features[first.keys[0]].shape == (1, 6)
    assert features[first.keys[0]].dtype == torch.float16

    backbone = FakeBackbone()
    reopened = FeatureStore(tmp_path / "cache", "ns")
    second = _run(dataset, reopened, backbone)
    assert (second.extracted, second.cached, backbone.calls) == (0, 10, 0)
    assert all(torch.equal(features[k], v) for k, v in reopened.load(second.keys).items())


def test_same_images_in_another_dataset_share_the_cache(dataset, tmp_path):
    store = FeatureStore(tmp_path / "cache", "ns")
    _run(dataset[:6], store)
    result = _run(dataset[3:], store)
    assert (result.cached, result.extracted) == (3, 4)


def test_shards_are_bounded_and_a_crash_loses_only_the_shard_in_progress(dataset, tmp_path):
    store = FeatureStore(tmp_path / "cache", "ns")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(dataset, store, FakeBackbone(fail_after_calls=2), shard_size=3)  # 2 batches of 3 -> 2 shards
    assert len(list(store.root.glob("shard-*.safetensors"))) == 2
    assert not list(store.root.glob(".*.tmp"))
    resumed = FeatureStore(tmp_path / "cache", "ns")
    assert len(resumed) == 6
    result = _run(dataset, resumed)
    assert (result.cached, result.extracted) == (6, 4)


def test_corrupt_shard_is_detected_and_recomputed(dataset, tmp_path):
    store = FeatureStore(tmp_path / "cache", "ns")
    keys = _run(dataset, store, shard_size=5).keys
    good = store.load(keys)
    shard = sorted(store.root.glob("shard-*.safetensors"))[0]
    lost = len(json.loads((store.root / "index.json").read_text())["shards"][shard.name]["keys"])
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    reopened = FeatureStore(tmp_path / "cache", "ns")
    assert reopened.dropped_shards == [shard.name] and len(reopened) == 10 - lost
    result = _run(dataset, reopened)
    assert (result.cached, result.extracted) == (10 - lost, lost)
    diffs = {k: (good[k].float() - v.float()).abs().max().item() for k, v in reopened.load(keys).items()}
    assert max(diffs.values()) < 1e-3, diffs


def test_truncated_unlisted_shard_is_dropped_and_missing_index_is_rebuilt(dataset, tmp_path):
    store = FeatureStore(tmp_path / "cache", "ns")
    _run(dataset, store, shard_size=5)
    (store.root / "index.json").unlink()
    assert len(FeatureStore(tmp_path / "cache", "ns")) == 10
    assert json.loads((store.root / "index.json").read_text())["version"] == 1
    shard = sorted(store.root.glob("shard-*.safetensors"))[0]
    lost = len(json.loads((store.root / "index.json").read_text())["shards"][shard.name]["keys"])
    (store.root / "index.json").unlink()
    shard.write_bytes(shard.read_bytes()[:50])
    assert len(FeatureStore(tmp_path / "cache", "ns")) == 10 - lost


def test_undecodable_images_are_reported_not_fatal(tmp_path):
    rows = [{"file_name": f"{i}.jpg", "label": 0} for i in range(4)]
    images = {
        "0.jpg": jpeg_bytes(seed=0),
        "1.jpg": b"garbage",
        "2.jpg": jpeg_bytes(seed=2)[:200],
        "3.jpg": jpeg_bytes(seed=3),
    }
    samples = load_samples(write_folder(tmp_path / "ds", rows, images))
    store = FeatureStore(tmp_path / "cache", "ns")
    result = _run(samples, store)
    assert result.extracted == 2 and set(result.failures) == {"1.jpg", "2.jpg"}
    assert result.keys[1] is None and result.keys[2] is None and result.keys[0] in store
    assert "not an image" in result.failures["1.jpg"] and "cannot decode" in result.failures["2.jpg"]


def test_keys_and_namespaces():
    keys, failures = content_keys([])
    assert keys == [] and failures == {}
    base = namespace_for("efficientnet-lite0", 224, "auto")
    assert base == namespace_for("efficientnet-lite0", 224, "auto")
    others = {namespace_for("efficientnet-lite0", 224, "seed12"), namespace_for("efficientnet-lite0", 256, "auto"),
              namespace_for("dinov3-vits16", 224, "auto"), namespace_for("efficientnet-lite0", 224, "auto", "/w")}
    assert base not in others and len(others) == 4
    assert "/" not in namespace_for("hf:/some/local/path", 224, "auto")
    assert namespace_for("dinov3-vits16", 512, "auto", precision="bf16") != namespace_for("dinov3-vits16", 512, "auto")


def test_namespace_follows_the_weights_not_just_their_path(tmp_path, monkeypatch):
    import os

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one")
    before = namespace_for("convnextv2-atto", 224, "auto", str(weights))
    weights.write_bytes(b"other weights")
    os.utime(weights, ns=(1, 1))
    assert namespace_for("convnextv2-atto", 224, "auto", str(weights)) != before
    monkeypatch.chdir(tmp_path)
    assert namespace_for("convnextv2-atto", 224, "auto", "model.safetensors") == namespace_for(
        "convnextv2-atto", 224, "auto", str(weights))


def test_a_source_store_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ROADWORK_CACHE", str(tmp_path / "env-cache"))
    store = BackboneSource(BackboneSpec("fake", None, 32, 8, "auto")).store(None)
    assert store.root.parent == tmp_path / "env-cache"


def test_atomic_writes_leave_no_temporary_files_and_honour_the_umask(tmp_path):
    import os
    import stat

    from roadwork.storage import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "one")
        atomic_write_text(tmp_path / "a.txt", "two")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_non_finite_features_are_failures_not_poison(dataset, tmp_path):
    class Overflowing(FakeBackbone):
        def features(self, views):
            out = super().features(views)
            out[0, 0] = 1e6  # beyond float16
            return out

    store = FeatureStore(tmp_path / "cache", "ns")
    result = extract_features(
        dataset[:3], Overflowing(), "auto", store, images_per_batch=1, num_workers=0, progress=False
    )
    assert result.extracted == 0 and len(result.failures) == 3 and len(store) == 0
    assert all("not finite" in reason for reason in result.failures.values())


def test_unexpected_decoder_errors_fail_one_image_not_the_run(dataset, tmp_path, monkeypatch):
    import roadwork.features.extract as extract_module

    real = extract_module.image_views

    def flaky(data, plan, size, source):
        if source == dataset[2].file_name:
            raise ZeroDivisionError("hostile header")
        return real(data, plan, size, source=source)

    monkeypatch.setattr(extract_module, "image_views", flaky)
    result = _run(dataset, FeatureStore(tmp_path / "cache", "ns"))
    assert result.extracted == 9 and "ZeroDivisionError" in result.failures[dataset[2].file_name]


def test_in_place_corruption_with_unchanged_size_and_time_is_caught_on_load(dataset, tmp_path):
    import os

    from roadwork.features.store import CorruptShardError

    store = FeatureStore(tmp_path / "cache", "ns")
    keys = _run(dataset, store, shard_size=20).keys
    (shard,) = store.root.glob("shard-*.safetensors")
    info = shard.stat()
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(info.st_atime_ns, info.st_mtime_ns))
    reopened = FeatureStore(tmp_path / "cache", "ns")
    assert len(reopened) == 10  # size and time match: trusted until read
    with pytest.raises(CorruptShardError, match="run again"):
        reopened.load(keys)
    assert not shard.exists() and len(FeatureStore(tmp_path / "cache", "ns")) == 0
    assert _run(dataset, FeatureStore(tmp_path / "cache", "ns")).extracted == 10


def test_stale_temporary_shards_are_cleaned(tmp_path):
    import os

    store = FeatureStore(tmp_path / "cache", "ns")
    stale, fresh = store.root / ".shard-old.safetensors.x.tmp", store.root / ".shard-new.safetensors.y.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    os.utime(stale, (1, 1))
    FeatureStore(tmp_path / "cache", "ns")
    assert not stale.exists() and fresh.exists()


def test_feature_sources_keep_their_features_apart_and_describe_themselves_without_loading(tmp_path):
    spec = BackboneSpec("fake-backbone-that-cannot-load", None, 32, 8, "auto")
    base, tuned = BackboneSource(spec), BackboneSource(spec, "backbone-0", changed="ab" * 32)
    roots = {s.store(tmp_path).root for s in (base, tuned)} | {s.store(tmp_path, variant="aug1").root
                                                                for s in (base, tuned)}
    assert len(roots) == 4   # base, fine-tuned, and a transformed copy of each: four namespaces
    assert base.store(tmp_path).root == BackboneSource(spec).store(tmp_path).root   # and stable
    assert tuned.describe() == {"name": "backbone-0", "kind": "adapted_backbone", "backbone": spec.name,
                                "input_size": 32, "views": "auto", "changed_weights_sha256": "ab" * 32}
    with pytest.raises(ValueError, match="changed weights were not stored"):
        tuned.load("cpu")
