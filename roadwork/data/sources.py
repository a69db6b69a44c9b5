"""Dataset sources: an imagefolder-style folder, parquet, or a Hugging Face dataset (``hf:id[:split]``).

Every source yields the same :class:`Sample` records; errors name the file and row at fault.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from roadwork.data.decode import ImageDecodeError, decode_base64
from roadwork.data.records import DatasetError, Sample, make_sample

# Spellings used by real datasets for our metadata fields (the NATIX set says scene_description).
COLUMN_ALIASES = {"scene_description": "description", "lat": "latitude", "lon": "longitude", "lng": "longitude"}
IMAGE_COLUMNS = ("image", "img", "file_name")


def _canonical(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for alias, name in COLUMN_ALIASES.items():
        if alias in out and name not in out:
            out[name] = out.pop(alias)
    return out


def _resolve_inside(root: Path, file_name: str, where: str) -> Path:
    relative = Path(file_name)
    if relative.is_absolute() or file_name.startswith(("/", "\\")):
        raise DatasetError(f"{where}: file_name {file_name!r} must be relative to the dataset folder")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: file_name {file_name!r} escapes the dataset folder {root}")
    return path


# A long description is fine; a cell of megabytes is a broken file (an unclosed quote swallowing the rest).
MAX_CELL_CHARS = 1_000_000


def _folder_rows(metadata: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of metadata.csv / metadata.jsonl; undecodable text and broken CSV are
    a DatasetError naming the line."""
    try:
        yield from _read_rows(metadata)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{metadata}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                           f"{error.start}); save it as UTF-8") from None


def _read_rows(metadata: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(metadata, newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets write a BOM
        if metadata.suffix == ".csv":
            previous = csv.field_size_limit(MAX_CELL_CHARS)
            try:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or "file_name" not in [c.strip() for c in reader.fieldnames]:
                    raise DatasetError(
                        f"{metadata}: missing required column 'file_name' (columns: {reader.fieldnames})"
                    )
                for row in reader:
                    yield reader.line_num, {(k or "").strip(): v for k, v in row.items()}
            except csv.Error as error:
                raise DatasetError(f"{metadata}:{reader.line_num}: unreadable CSV ({error}; a cell may hold at "
                                   f"most {MAX_CELL_CHARS} characters; is a quote left open?)") from None
            finally:
                csv.field_size_limit(previous)
            return
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{metadata}:{line_number}: invalid JSON: {error}") from error
            if not isinstance(row, dict) or "file_name" not in row:
                raise DatasetError(f"{metadata}:{line_number}: missing required column 'file_name'")
            yield line_number, row


def load_folder(root: Path, *, require_labels: bool = True) -> list[Sample]:
    root = Path(root)
    candidates = [root / "metadata.csv", root / "metadata.jsonl"]
    metadata = next((p for p in candidates if p.is_file()), None)
    if metadata is None:
        raise DatasetError(f"{root}: no metadata.csv or metadata.jsonl found")
    samples = []
    for line_number, raw in _folder_rows(metadata):
        row = _canonical(raw)
        where = f"{metadata}:{line_number}"
        file_name = str(row.get("file_name") or "").strip()
        if not file_name:
            raise DatasetError(f"{where}: empty file_name")
        path = _resolve_inside(root, file_name, where)
        if not path.is_file():
            raise DatasetError(f"{where}: image {file_name!r} not found at {path}")
        samples.append(make_sample(row, file_name=file_name, where=where, require_label=require_labels, path=path))
    return samples


def _image_cell(value: Any, base: Path | None, where: str) -> tuple[bytes | None, Path | None, str | None]:
    """Image as stored by parquet/datasets: raw bytes, a path, a base64 string or a {'bytes', 'path'} struct.

    ``base=None`` trusts absolute paths (the datasets library resolves image files itself).
    """
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), None, value.get("path")
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None, None
    if isinstance(value, str) and value:
        if value.startswith("data:image/") or len(value) > 1024:
            try:
                return decode_base64(value), None, None
            except ImageDecodeError as error:
                raise DatasetError(f"{where}: image string is neither a path nor base64: {error}") from error
        if base is None:
            return None, Path(value), value
        return None, _resolve_inside(base, value, where), value
    raise DatasetError(f"{where}: image cell holds neither bytes nor a path")


def _records_to_samples(rows: Iterable[Mapping[str, Any]], base: Path | None, origin: str, require_labels: bool,
                        name_prefix: str = "") -> list[Sample]:
    samples = []
    for index, raw in enumerate(rows):
        row = _canonical(raw)
        where = f"{origin} row {index}"
        column = next((c for c in IMAGE_COLUMNS if row.get(c) is not None), None)
        if column is None:
            raise DatasetError(f"{where}: no image column (expected one of {', '.join(IMAGE_COLUMNS)})")
        data, path, name = _image_cell(row[column], base, where)
        try:
            found = path is None or path.is_file()
        except OSError as error:
            raise DatasetError(f"{where}: unusable image path {name!r}: {error}") from error
        if not found:
            raise DatasetError(f"{where}: image {name!r} not found at {path}")
        file_name = str(row.get("file_name") or name or f"{name_prefix}row-{index:06d}")
        row = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
        samples.append(
            make_sample(row, file_name=file_name, where=where, require_label=require_labels, path=path, data=data)
        )
    return samples


def load_parquet(path: Path, *, require_labels: bool = True) -> list[Sample]:
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path}: no parquet files found")
    samples: list[Sample] = []
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as error:
            raise DatasetError(f"{file}: cannot read parquet: {error}") from error
        prefix = f"{file.stem}/" if len(files) > 1 else ""
        samples.extend(_records_to_samples(table.to_pylist(), file.parent, str(file), require_labels, prefix))
    return samples


def _split_hf_spec(spec: str) -> tuple[str, str]:
    name, _, split = spec.rpartition(":")
    if name and split and "/" not in split and not Path(spec).exists():
        return name, split
    return spec, "train"


def load_hf(spec: str, *, require_labels: bool = True) -> list[Sample]:
    """``hf:<dataset id or local folder>[:split]`` through the datasets library (offline-friendly)."""
    import datasets

    name, split = _split_hf_spec(spec)
    try:
        saved = ("dataset_info.json", "state.json", "dataset_dict.json")
        if any((Path(name) / marker).is_file() for marker in saved):
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name, split=split)
    except Exception as error:
        raise DatasetError(f"hf:{spec}: cannot load dataset: {error}") from error
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return _records_to_samples(iter(dataset), None, f"hf:{spec}", require_labels)


def load_samples(spec: str | Path, *, require_labels: bool = True) -> list[Sample]:
    """Load any supported source; an empty dataset is an error, never a silent no-op."""
    text = str(spec)
    if text.startswith("hf:"):
        samples = load_hf(text[3:], require_labels=require_labels)
    else:
        path = Path(text)
        if not path.exists():
            raise DatasetError(f"{path}: dataset not found")
        if path.is_dir() and ((path / "metadata.csv").is_file() or (path / "metadata.jsonl").is_file()):
            samples = load_folder(path, require_labels=require_labels)
        elif path.suffix == ".parquet" or (path.is_dir() and any(path.glob("**/*.parquet"))):
            samples = load_parquet(path, require_labels=require_labels)
        else:
            raise DatasetError(f"{path}: not a dataset (expected metadata.csv/.jsonl, parquet, or hf:<id>)")
    if not samples:
        raise DatasetError(f"{spec}: dataset is empty")
    return samples
