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
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from roadwork.errors import RoadworkError
from roadwork.storage import atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)
INDEX_NAME = "index.json"
INDEX_VERSION = 1
# Part of every namespace: bump it whenever decoding or view building changes what the backbone sees,
# so no run mixes features made by different pipelines. 2: views are rounded to 8 bits.
VIEW_PIPELINE_VERSION = 2


def default_cache_dir() -> Path:
    """``$ROADWORK_CACHE``, else the per-user cache folder (``$XDG_CACHE_HOME`` or ~/.cache)."""
    if env := os.environ.get("ROADWORK_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roadwork"


def local_identity(location: str | None) -> str:
    """Path plus size and modification time of every file under a local weights location.

    Replacing a checkpoint in place, or the same relative path meaning another folder from another
    working directory, must not reuse features computed with different weights. Sizes and times,
    not content hashes: hashing a 14 GB checkpoint at every start would cost more than it saves.
    """
    if not location or not Path(location).exists():
        return location or ""
    root = Path(location).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(root)) if p != root else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return f"{root}:{hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}"


def namespace_for(backbone: str, input_size: int, plan: str, weights: str | None = None, precision: str = "fp32",
                  variant: str | None = None) -> str:
    """Folder name for one (backbone, weights, input size, view plan, precision, variant): features differ
    when any differs. ``variant`` names features of transformed views (an augmented copy), never mixed
    with the plain ones."""
    local_model = backbone[3:] if backbone.startswith("hf:") else None
    identity = (f"{backbone}|{local_identity(local_model)}|{local_identity(weights)}|{input_size}|{plan}|{precision}"
                f"|v{VIEW_PIPELINE_VERSION}" + (f"|{variant}" if variant else ""))
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone)[-48:] + (f"-{variant.split('|')[0]}" if variant else "")
    return f"{readable}-{input_size}-{plan}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def adapted_variant(digest: str) -> str:
    """The cache variant of features from a fine-tuned backbone, named by its stored weights' SHA-256."""
    return f"adapted-{digest[:12]}|{digest}"


class CorruptShardError(RoadworkError):
    """A shard's bytes changed after it was indexed; it has been removed, a rerun re-extracts it."""


def _stat(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


class FeatureStore:
    STALE_TEMP_SECONDS = 3600  # a temporary shard this old belongs to a killed run, not a live one

    def __init__(self, cache_dir: str | Path, namespace: str) -> None:
        self.root = Path(cache_dir) / namespace
        self.root.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, dict] = {}
        self._key_to_shard: dict[str, str] = {}
        self._verified: set[str] = set()
        self.dropped_shards: list[str] = []
        self.refresh()

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

    def _write_index(self, entries: dict[str, dict]) -> None:
        atomic_write_json(self.root / INDEX_NAME, {"version": INDEX_VERSION, "shards": entries})

    def _drop(self, path: Path) -> None:
        log.warning("feature shard %s is corrupt; its images will be extracted again", path.name)
        self.dropped_shards.append(path.name)
        path.unlink(missing_ok=True)

    def refresh(self) -> None:
        """Index what is on disk, shards other processes wrote since included: listed shards whose size
        and time are unchanged are trusted as they are (their hash is checked when loaded); changed or
        unlisted shards are hashed and read."""
        with self._locked():
            listed = self._read_index()
            entries: dict[str, dict] = {}
            for path in sorted(self.root.glob("shard-*.safetensors")):
                entry = listed.get(path.name)
                if entry is not None and {k: entry.get(k) for k in ("size", "mtime_ns")} == _stat(path):
                    entries[path.name] = entry
                    continue
                digest = sha256_file(path)
                if entry is not None and entry.get("sha256") == digest:
                    entries[path.name] = {**entry, **_stat(path)}
                    continue
                try:
                    keys = None if entry is not None else sorted(load_file(path).keys())
                except (SafetensorError, OSError, ValueError, RuntimeError):
                    keys = None
                if keys is None:
                    self._drop(path)
                    continue
                entries[path.name] = {"sha256": digest, "keys": keys, **_stat(path)}
            for temp in self.root.glob(".shard-*.tmp"):
                if time.time() - temp.stat().st_mtime > self.STALE_TEMP_SECONDS:
                    temp.unlink(missing_ok=True)
            if entries != listed:
                self._write_index(entries)
        self._entries = entries
        self._key_to_shard = {key: name for name, entry in entries.items() for key in entry["keys"]}

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_shard

    def __len__(self) -> int:
        return len(self._key_to_shard)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in dict.fromkeys(keys) if key not in self._key_to_shard]

    def _verify(self, shard: str) -> None:
        """Hash a shard once per process before trusting its bytes; a mismatch removes it."""
        if shard in self._verified:
            return
        path = self.root / shard
        if sha256_file(path) != self._entries[shard]["sha256"]:
            self._drop(path)
            with self._locked():
                entries = self._read_index()
                entries.pop(shard, None)
                self._write_index(entries)
            for key in self._entries.pop(shard)["keys"]:
                self._key_to_shard.pop(key, None)
            raise CorruptShardError(f"feature shard {path} was corrupt and has been removed; run again to re-extract")
        self._verified.add(shard)

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
            self._verify(shard)
            # Only the requested tensors, cloned: a view of the memory map would crash this
            # process (SIGBUS) if another one truncated the file.
            with safe_open(self.root / shard, framework="pt") as handle:
                out.update({key: handle.get_tensor(key).clone() for key in shard_keys})
        return out

    def write_shard(self, features: dict[str, torch.Tensor]) -> str:
        """Persist one shard atomically, then list it in the index."""
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tensors = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in features.items()}
        atomic_write_bytes(self.root / name, save(tensors))  # save_file would create a 0600 file
        path = self.root / name
        entry = {"sha256": sha256_file(path), "keys": sorted(tensors), **_stat(path)}
        with self._locked():
            entries = self._read_index()
            entries[name] = entry
            self._write_index(entries)
        self._entries[name] = entry
        self._verified.add(name)
        self._key_to_shard.update({key: name for key in entry["keys"]})
        return name
