"""Crash-safe file writing, bounded reading and hashing, shared by every part that persists or reads data."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from roadwork.errors import RoadworkError


def writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and return it; a file in its place, or no permission, is a clear
    RoadworkError before any long work starts."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise RoadworkError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RoadworkError(f"{what} {folder} cannot be created: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RoadworkError(f"{what} {folder} is not writable")
    return folder


MAX_FILE_BYTES = 100 * 2**20   # no photo a camera writes comes near it; a 2 GB "image" is an attack or a mistake


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, else ``OSError``: a named pipe or device
    would block or never end, and a huge file would be held in memory before any header check."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path}: not a regular file")
    if info.st_size > max_bytes:
        raise OSError(f"{path}: {info.st_size} bytes exceeds the limit of {max_bytes} bytes per image")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:   # it grew after the check
        raise OSError(f"{path}: more than {max_bytes} bytes")
    return data


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Readers therefore see either the old file or the complete new one, never a torn write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    # os.open with 0o666 lets the umask decide permissions, as for any new file (mkstemp forces 0600).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_folder(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write a temporary sibling folder, then swap it into place whole: a reader sees the
    old folder or the complete new one, and a crash leaves no half-written folder at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(staging)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a server may run as another user
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
