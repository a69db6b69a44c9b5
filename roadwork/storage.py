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
from collections.abc import Callable, Iterator, Sequence
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


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing folder above ``path`` must let us create it."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RoadworkError(f"{what} {path} cannot be created: {parent} is not a writable folder")


def _inside(inner: Path, outer: Path) -> bool:
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_output(path: str | os.PathLike[str], what: str, *, replace: bool = False, how: str = "--overwrite",
                 inputs: Sequence[str | os.PathLike[str]] = (), file: bool = False) -> Path:
    """Where a command will write (a folder, or with ``file`` one file), checked before any long work
    and without creating anything, so an input error found later leaves nothing behind.

    Existing content is never replaced unless ``replace`` (the user's ``how`` flag) says so, and never
    when one of the command's ``inputs`` (paths that exist) lies inside it: replacing it would destroy
    the data or model being read.
    """
    target = Path(path)
    for source in inputs:
        if Path(source).exists() and target.exists() and _inside(Path(source), target):
            raise RoadworkError(f"{what} {target} holds the input {source}: writing there could destroy it; "
                                "choose another folder")
    if not target.exists() and not target.is_symlink():
        _writable_parent(target, what)
        return target
    if file:
        if not target.is_file():
            raise RoadworkError(f"{what} {target} exists and is not a regular file")
        if not replace:
            raise RoadworkError(f"{what} {target} already exists: choose another name or pass {how}")
    else:
        if not target.is_dir():
            raise RoadworkError(f"{what} {target} is a file, not a folder")
        if not replace and any(target.iterdir()):
            raise RoadworkError(f"{what} {target} is not empty: choose a new folder or pass {how}")
    if not os.access(target if target.is_dir() else target.parent, os.W_OK | os.X_OK):
        raise RoadworkError(f"{what} {target} is not writable")
    return target


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


MAX_JSON_BYTES = 16 * 2**20   # a manifest or index lists files and settings; megabytes, not gigabytes


def read_json(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON document from a regular file of bounded size, else ``ValueError`` (``OSError`` when
    unreadable): a symlink to /dev/zero, a FIFO or a deeply nested document must fail fast and plainly."""
    data = read_file(path, max_bytes)
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
