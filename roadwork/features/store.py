"""Feature store: per-image backbone features on disk, keyed by image content.

Layout: ``<cache>/<namespace>/shard-<id>.safetensors`` (float16 ``[n_views, dim]`` per image,
tensor name = SHA-256 of the image bytes) plus ``index.json`` listing each shard's keys and
SHA-256. Shards are written whole and renamed into place, so a crash loses at most the shard in
progress; the index is rebuilt from the shards when it is missing or stale, and a shard whose
bytes do not match the index is deleted so its images are extracted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from roadwork.storage import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger(__name__)
INDEX_NAME = "index.json"
INDEX_VERSION = 1


def default_cache_dir() -> Path:
    """``$ROADWORK_CACHE``, else the per-user cache folder (``$XDG_CACHE_HOME`` or ~/.cache)."""
    if env := os.environ.get("ROADWORK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roadwork"


def namespace_for(backbone: str, input_size: int, plan: str, weights: str | None = None) -> str:
    """Folder name for one (backbone, weights, input size, view plan): features differ when any differs."""
    identity = f"{backbone}|{weights or ''}|{input_size}|{plan}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone)[-48:]
    return f"{readable}-{input_size}-{plan}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


class FeatureStore:
    def __init__(self, cache_dir: str | Path, namespace: str) -> None:
        self.root = Path(cache_dir) / namespace
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, dict] = {}
        self._key_to_shard: dict[str, str] = {}
        self.dropped_shards: list[str] = []
        self._reconcile()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise index updates between processes sharing this cache."""
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, dict]:
        try:
            index = json.loads((self.root / INDEX_NAME).read_text())
            if index.get("version") == INDEX_VERSION and isinstance(index.get("shards"), dict):
                return index["shards"]
        except (OSError, ValueError):
            pass
        return {}

    def _reconcile(self) -> None:
        """Trust only shards whose bytes match the index; adopt complete shards the index missed."""
        with self._locked():
            listed = self._read_index()
            shards: dict[str, dict] = {}
            for path in sorted(self.root.glob("shard-*.safetensors")):
                entry = listed.get(path.name)
                digest = sha256_file(path)
                if entry is not None and entry.get("sha256") == digest:
                    shards[path.name] = entry
                    continue
                try:
                    keys = sorted(load_file(path).keys())
                except (SafetensorError, OSError, ValueError, RuntimeError):
                    keys = None
                if keys is None or entry is not None:
                    log.warning("feature shard %s is corrupt; its images will be extracted again", path.name)
                    self.dropped_shards.append(path.name)
                    path.unlink(missing_ok=True)
                    continue
                shards[path.name] = {"sha256": digest, "keys": keys}
            if shards != listed:
                atomic_write_json(self.root / INDEX_NAME, {"version": INDEX_VERSION, "shards": shards})
        self._shards = shards
        self._key_to_shard = {key: name for name, entry in shards.items() for key in entry["keys"]}

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_shard

    def __len__(self) -> int:
        return len(self._key_to_shard)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in dict.fromkeys(keys) if key not in self._key_to_shard]

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Features of ``keys`` (float16 [n_views, dim]); raises KeyError naming a missing key."""
        wanted = list(dict.fromkeys(keys))
        by_shard: dict[str, list[str]] = {}
        for key in wanted:
            if key not in self._key_to_shard:
                raise KeyError(f"features for image {key[:12]}... are not in {self.root}")
            by_shard.setdefault(self._key_to_shard[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for shard, shard_keys in by_shard.items():
            # Copies, not views of the memory-mapped file: a shard truncated by another process
            # must not crash this one with SIGBUS.
            tensors = load_file(self.root / shard)
            out.update({key: tensors[key].clone() for key in shard_keys})
        return out

    def write_shard(self, features: dict[str, torch.Tensor]) -> str:
        """Persist one shard atomically, then list it in the index."""
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tensors = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in features.items()}
        with atomic_path(self.root / name) as tmp:
            save_file(tensors, str(tmp))
        entry = {"sha256": sha256_file(self.root / name), "keys": sorted(tensors)}
        with self._locked():
            shards = self._read_index()
            shards[name] = entry
            atomic_write_json(self.root / INDEX_NAME, {"version": INDEX_VERSION, "shards": shards})
        self._shards[name] = entry
        self._key_to_shard.update({key: name for key in entry["keys"]})
        return name
