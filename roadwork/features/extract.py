"""Fill the feature store: decode, build views, run the frozen backbone, write shards.

Extraction streams: a DataLoader worker decodes the next images while the backbone runs, and at
most one shard of features is held in memory, so memory stays flat however large the dataset.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from roadwork.data.decode import ImageDecodeError
from roadwork.data.records import DatasetError, Sample
from roadwork.data.views import image_views
from roadwork.distributed import barrier, rank_and_world
from roadwork.features.store import FeatureStore
from roadwork.features.table import as_is
from roadwork.progress import progress_bar
from roadwork.storage import sha256_bytes

log = logging.getLogger(__name__)


@dataclass
class ExtractionResult:
    keys: list[str | None]                                  # content key per sample; None where it failed
    failures: dict[str, str] = field(default_factory=dict)  # file_name -> reason
    extracted: int = 0
    cached: int = 0
    views: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds else 0.0


def content_keys(samples: Sequence[Sample], progress: bool | None = False) -> tuple[list[str | None], dict[str, str]]:
    """SHA-256 of each image's bytes: the cache key shared by every run, fold and plan user."""
    keys: list[str | None] = []
    failures: dict[str, str] = {}
    with progress_bar(len(samples), "hash images", enabled=progress) as advance:
        for sample in samples:
            try:
                keys.append(sha256_bytes(sample.read_bytes()))
            except DatasetError as error:
                keys.append(None)
                failures[sample.file_name] = str(error)
            advance(1)
    return keys, failures


class ViewsDataset(Dataset):
    """(index, uint8 views or None, error or None) per sample: decoding failures are data, not exceptions."""

    def __init__(self, samples: Sequence[Sample], plan: str, input_size: int) -> None:
        self.samples, self.plan, self.input_size = samples, plan, input_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        sample = self.samples[index]
        try:
            return index, image_views(sample.read_bytes(), self.plan, self.input_size, source=sample.file_name), None
        except (ImageDecodeError, DatasetError) as error:
            return index, None, str(error)
        except Exception as error:  # a decoder bug on one hostile file must not end the whole run
            return index, None, f"{sample.file_name}: cannot build views: {type(error).__name__}: {error}"


def default_workers() -> int:
    """One decoding worker per spare core, at most 8: decoding large JPEGs on one core caps a GPU."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def one_thread_per_worker(worker_id: int) -> None:
    """Decoding workers resize with one thread each, leaving the other cores to the backbone."""
    torch.set_num_threads(1)


def extract_features(
    samples: Sequence[Sample],
    backbone: torch.nn.Module | Callable[[], torch.nn.Module],
    plan: str,
    store: FeatureStore,
    *,
    images_per_batch: int = 16,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool | None = None,
    hashed: tuple[list[str | None], dict[str, str]] | None = None,
    augment: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> ExtractionResult:
    """Extract what the store lacks; undecodable images are reported in ``failures``, not fatal.

    ``num_workers=None`` uses ``default_workers()`` decoding processes.

    ``backbone`` may be a zero-argument callable: it is only called when something is missing.
    ``hashed`` passes ``content_keys(samples)`` already computed by the caller. ``augment(views, key)``
    transforms each image's views before the backbone (an augmented feature bank); its store must
    be a separate variant.
    """
    keys, failures = hashed if hashed is not None else content_keys(samples, progress)
    failures = dict(failures)
    todo_keys = set(store.missing(k for k in keys if k is not None))
    first_sample = {}
    for sample, key in zip(samples, keys):
        if key in todo_keys:
            first_sample.setdefault(key, sample)
    order_keys = list(first_sample)
    todo = list(first_sample.values())
    result = ExtractionResult(
        keys=keys, failures=failures, cached=sum(k is not None and k not in todo_keys for k in keys)
    )
    if not todo:
        return result
    if not isinstance(backbone, torch.nn.Module):
        backbone = backbone()
    nulls = getattr(backbone, "gives_null", False)
    num_workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        ViewsDataset(todo, plan, backbone.input_size),
        batch_size=images_per_batch,
        num_workers=num_workers,
        collate_fn=as_is,
        worker_init_fn=one_thread_per_worker,
        prefetch_factor=2 if num_workers else None,
    )
    pending: dict[str, torch.Tensor] = {}
    bad_keys: set[str] = set()
    start = time.perf_counter()
    with progress_bar(len(todo), f"extract {backbone.name}", enabled=progress) as advance:
        for batch in loader:
            good = [(i, views) for i, views, _ in batch if views is not None]
            for i, _, error in batch:
                if error is not None:
                    failures[todo[i].file_name] = error
                    bad_keys.add(order_keys[i])
            if augment is not None:
                good = [(i, augment(views, order_keys[i])) for i, views in good]
            if good:
                counts = [views.shape[0] for _, views in good]
                pooled = backbone.features(torch.cat([views for _, views in good]))
                for (i, _), chunk in zip(good, pooled.split(counts)):
                    # float16 storage overflows past 65504; a non-finite feature would poison training.
                    # An expert that gives NULL (NaN) evidence on purpose says so (``gives_null``).
                    stored = chunk.to(torch.float16)
                    if (stored.isinf() if nulls else ~torch.isfinite(stored)).any():
                        failures[todo[i].file_name] = f"{todo[i].file_name}: backbone features are not finite"
                        bad_keys.add(order_keys[i])
                        continue
                    pending[order_keys[i]] = chunk
                result.views += sum(counts)
                result.extracted += sum(order_keys[i] not in bad_keys for i, _ in good)
            if len(pending) >= shard_size:
                store.write_shard(pending)
                pending = {}
            advance(len(batch))
        if pending:
            store.write_shard(pending)
    result.seconds = time.perf_counter() - start
    result.keys = [None if k in bad_keys else k for k in keys]
    for sample, key in zip(samples, keys):
        if key in bad_keys and sample.file_name not in failures:
            failures[sample.file_name] = "undecodable image (same bytes as another failed file)"
    if failures:
        log.warning("%d image(s) could not be used: %s", len(failures), "; ".join(list(failures.values())[:3]))
    return result


def extract_and_load(samples: Sequence[Sample], backbone: torch.nn.Module | Callable[[], torch.nn.Module], plan: str,
                     store: FeatureStore, **options: object) -> tuple[ExtractionResult, list[torch.Tensor | None]]:
    """The one path from samples to features: extract what the store lacks, then load every sample's
    ``[views, dim]`` features in sample order (None where it failed). Train, evaluate and predict use it."""
    rank, world = rank_and_world()
    if world > 1:
        # Each training process extracts its share of what the store lacks; then every process loads all.
        share = slice(rank, None, world)
        hashed = options.get("hashed")
        extract_features(samples[share], backbone, plan, store,  # type: ignore[arg-type]
                         **{**options, "hashed": (hashed[0][share], hashed[1])} if hashed else options)  # type: ignore[index]
        barrier()
        store.refresh()
    result = extract_features(samples, backbone, plan, store, **options)  # type: ignore[arg-type]
    loaded = store.load(k for k in result.keys if k is not None)
    return result, [None if k is None else loaded[k] for k in result.keys]
