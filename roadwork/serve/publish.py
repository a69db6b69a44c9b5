"""Publish a bundle as a StreetVision miner does: a Hugging Face model repository holding the bundle,
the network's ``model_card.json`` and a README model card.

The network reads ``model_card.json`` (``model_name``, ``description``, ``version`` X.Y.Z,
``submitted_by``: the miner's hotkey, ``submission_time``: Unix seconds). The README says what a
person needs before trusting the model: the held-out numbers and how they were measured, the training
data, the intended use and its limits. The folder is written whole (staging, then rename) and
uploaded with ``huggingface_hub`` unless it is a dry run; ``load_scorer`` reads the downloaded folder
like the bundle inside it.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from roadwork import __version__
from roadwork.errors import RoadworkError
from roadwork.serve.scorer import MANIFEST, PUBLISHED_BUNDLE, PUBLISHED_CARD, load_scorer, published_bundle, read_kind
from roadwork.storage import atomic_write_json, atomic_write_text, check_output, read_json, write_folder

VERSION = re.compile(r"\d+\.\d+\.\d+")
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# A Bittensor hotkey is an SS58 address: base58 (no 0, O, I or l), 46 to 48 characters.
HOTKEY = re.compile(r"[1-9A-HJ-NP-Za-km-z]{46,48}")


class HubClient(Protocol):
    """What publishing calls of ``huggingface_hub.HfApi`` (a stand-in in tests)."""

    def create_repo(self, repo_id: str, *, repo_type: str, exist_ok: bool, private: bool) -> Any: ...

    def upload_folder(self, *, repo_id: str, folder_path: str, repo_type: str, commit_message: str) -> Any: ...


def _check(repo: str, hotkey: str, version: str) -> None:
    if not REPO.fullmatch(repo):
        raise RoadworkError(f"--repo must be a Hugging Face model id OWNER/NAME, got {repo!r}")
    if not HOTKEY.fullmatch(hotkey):
        raise RoadworkError(f"--hotkey must be the miner's SS58 hotkey address (46-48 base58 characters), "
                            f"got {hotkey!r}")
    if not VERSION.fullmatch(version):
        raise RoadworkError(f"--version must be X.Y.Z (three numbers), got {version!r}")


def _head_manifest(bundle: Path) -> dict[str, Any]:
    """The manifest that holds the training summary: the bundle's own, or the one of the bundle an
    ONNX export copied; an ensemble's metrics are its own."""
    kind, manifest = read_kind(bundle)
    if kind == "onnx":
        return read_json(bundle / "bundle" / MANIFEST)
    return manifest


def _percent(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.3f}"


def model_card(bundle: str | Path, repo: str, hotkey: str, version: str, now: float | None = None) -> dict[str, Any]:
    """The network's ``model_card.json`` for ``bundle`` published as ``repo`` by ``hotkey``."""
    _check(repo, hotkey, version)
    kind, _ = read_kind(bundle)
    manifest = _head_manifest(Path(bundle))
    metrics = manifest.get("metrics") or {}
    backbone = (manifest.get("backbone") or {}).get("name", "several backbones")
    description = (f"roadwork binary roadwork (construction-zone) classifier: a {kind} bundle over {backbone}; "
                   f"held-out MCC {_percent(metrics.get('mcc'))}, AUROC {_percent(metrics.get('auroc'))}.")
    return {"model_name": repo.split("/", 1)[1], "description": description, "version": version,
            "submitted_by": hotkey, "submission_time": int(now if now is not None else time.time())}


def readme(bundle: str | Path, card: dict[str, Any]) -> str:
    """The README model card: what the model is, its held-out numbers, its data, its intended use."""
    kind, _ = read_kind(bundle)
    manifest = _head_manifest(Path(bundle))
    metrics, data = manifest.get("metrics") or {}, manifest.get("data") or {}
    interval = (metrics.get("ci95") or {}).get("mcc")
    ci = f" (95% interval {interval[0]:.3f} to {interval[1]:.3f})" if interval else ""
    train = data.get("train") or {}
    rows = "".join(f"| {name} | {_percent(metrics.get(key))} |\n" for name, key in
                   (("MCC at 0.5", "mcc"), ("AUROC", "auroc"), ("accuracy", "accuracy"), ("Brier score", "brier")))
    return f"""---
tags: [roadwork, image-classification, streetvision]
---
# {card['model_name']} {card['version']}

{card['description']}

Written by roadwork {__version__} (bundle kind `{kind}`); submitted by hotkey
`{card['submitted_by']}`. Load it with `roadwork predict --bundle <this folder> photo.jpg`, or name this
folder as `bundle` in the StreetVision miner adapter's YAML.

## Held-out numbers

{metrics.get('estimate', 'How these were measured is not recorded in this bundle.')}; served inputs:
{metrics.get('inputs', 'the image alone')}. MCC {_percent(metrics.get('mcc'))}{ci}.

| metric | value |
|---|---|
{rows}
## Training data

Source: `{data.get('source', 'not recorded')}`; {train.get('n', 'an unknown number of')} photos
({train.get('positives', '?')} roadwork); validation: {data.get('validation', 'not recorded')}.

## Intended use

Deciding whether a street-level photo shows an active roadwork (construction) zone, as StreetVision
validators ask, one photo at a time; the probability is calibrated so that 0.5 is the decision. Not
for safety-critical use: photos from cameras, cities or seasons unlike the training data can score
far below the numbers above (roadwork's own measurements across sources are in its
`bench/RESULTS.md`), and the model has not been checked for any use other than this classification.
"""


def write_publication(bundle: str | Path, out: str | Path, *, repo: str, hotkey: str, version: str,
                      overwrite: bool = False, now: float | None = None) -> Path:
    """``out`` as it would be uploaded: ``bundle/`` (the verified bundle, copied), ``model_card.json``
    and ``README.md``."""
    bundle = published_bundle(bundle)
    load_scorer(bundle)   # verified (every file's hash) before anything is written
    card = model_card(bundle, repo, hotkey, version, now)
    out = check_output(out, "publication folder", replace=overwrite, inputs=[bundle])

    def fill(staging: Path) -> None:
        shutil.copytree(bundle, staging / PUBLISHED_BUNDLE)
        atomic_write_json(staging / PUBLISHED_CARD, card)
        atomic_write_text(staging / "README.md", readme(bundle, card))

    return write_folder(out, fill)


def upload(folder: str | Path, repo: str, client: HubClient | None = None, private: bool = False) -> None:
    """Create the model repository if needed and upload ``folder`` as one commit (the token comes from
    ``huggingface_hub``'s login or ``HF_TOKEN``)."""
    if client is None:
        from huggingface_hub import HfApi

        client = HfApi()
    card = read_json(Path(folder) / PUBLISHED_CARD)
    client.create_repo(repo, repo_type="model", exist_ok=True, private=private)
    client.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                         commit_message=f"roadwork model {card['version']}")
