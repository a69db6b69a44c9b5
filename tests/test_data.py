"""Datasets, NULL normalisation, splits and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roadwork.data.records import DatasetError, normalize_coordinates, normalize_text
from roadwork.data.sources import load_samples
from roadwork.data.splits import kfold_splits, train_val_split

from conftest import jpeg_bytes, write_folder


@pytest.mark.parametrize("value", [None, "", "  ", "null", "NULL", "None", "none", "nan", "NaN", float("nan")])
def test_every_null_spelling_becomes_none(value):
    assert normalize_text(value) is None


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (52.5, 13.4, (52.5, 13.4)),
        ("52.5", "13.4", (52.5, 13.4)),
        (float("nan"), 13.4, (None, None)),
        (91.0, 13.4, (None, None)),
        (52.5, -181.0, (None, None)),
        (52.5, None, (None, None)),
        ("inf", 0.0, (None, None)),
        ("north", 1.0, (None, None)),
    ],
)
def test_coordinates_nan_or_out_of_range_are_null(lat, lon, expected):
    assert normalize_coordinates(lat, lon) == expected


def test_folder_reads_metadata_and_normalises(tmp_path):
    rows = [
        {"file_name": "a.jpg", "label": "1", "latitude": "48.1", "longitude": "11.5", "weather": " Rain ",
         "daytime": "null", "scene": "", "description": "cones on the right", "camera": "x1"},
        {"file_name": "b.jpg", "label": "0", "latitude": "nan", "longitude": "11.5", "weather": "NONE",
         "daytime": "Night", "scene": "urban", "description": "", "camera": ""},
    ]
    samples = load_samples(write_folder(tmp_path, rows))
    a, b = samples
    assert (a.label, a.latitude, a.longitude, a.weather, a.daytime, a.scene) == (1, 48.1, 11.5, "rain", None, None)
    assert a.description == "cones on the right" and a.extra == {"camera": "x1"}
    assert (b.label, b.latitude, b.longitude, b.weather, b.daytime, b.scene) == (0, None, None, None, "night", "urban")
    assert b.description is None and b.extra == {"camera": None}
    assert a.read_bytes() == (tmp_path / "a.jpg").read_bytes()


def test_missing_metadata_columns_are_null(tmp_path):
    (sample,) = load_samples(write_folder(tmp_path, [{"file_name": "a.jpg", "label": 0}]))
    assert (sample.latitude, sample.weather, sample.daytime, sample.scene, sample.description) == (None,) * 5


def test_jsonl_and_aliases(tmp_path):
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())
    line = {"file_name": "x.jpg", "label": 1, "scene_description": "a work zone", "lat": 10.0, "lon": 20.0}
    (tmp_path / "metadata.jsonl").write_text(json.dumps(line) + "\n\n")
    (sample,) = load_samples(tmp_path)
    assert (sample.description, sample.latitude, sample.longitude) == ("a work zone", 10.0, 20.0)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"name": "a.jpg", "label": 0}], "missing required column 'file_name'"),
        ([{"file_name": "a.jpg", "label": 2}], "metadata.csv:2: label must be 0 or 1"),
        ([{"file_name": "a.jpg", "label": "yes"}], "label must be 0 or 1"),
        ([{"file_name": "a.jpg", "label": ""}], "label must be 0 or 1"),
        ([{"file_name": "../outside.jpg", "label": 0}], "escapes the dataset folder"),
        ([{"file_name": "/etc/passwd", "label": 0}], "must be relative"),
        (
            [{"file_name": "a.jpg", "label": 0}, {"file_name": "gone.jpg", "label": 1}],
            "metadata.csv:3: image 'gone.jpg' not found",
        ),
        ([], "dataset is empty"),
    ],
)
def test_bad_datasets_name_file_and_row(tmp_path, rows, message):
    images = {"gone.jpg": None}
    root = write_folder(tmp_path / "ds", rows or [{"file_name": "a.jpg", "label": 0}], images)
    if not rows:
        (root / "metadata.csv").write_text("file_name,label\n")
    with pytest.raises(DatasetError, match=message):
        load_samples(root)


def test_symlink_escaping_the_folder_is_rejected(tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes())
    root = write_folder(tmp_path / "ds", [{"file_name": "link.jpg", "label": 0}], {"link.jpg": None})
    (root / "link.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="escapes"):
        load_samples(root)


def test_unlabelled_data_allowed_only_when_labels_are_not_required(tmp_path):
    root = write_folder(tmp_path, [{"file_name": "a.jpg"}])
    assert load_samples(root, require_labels=False)[0].label is None
    with pytest.raises(DatasetError, match="label"):
        load_samples(root)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_samples(tmp_path / "nope")
    with pytest.raises(DatasetError, match="not a dataset"):
        load_samples(tmp_path)


def _parquet_table(tmp_path: Path) -> pa.Table:
    (tmp_path / "p.jpg").write_bytes(jpeg_bytes(seed=7))
    return pa.table(
        {
            "image": [
                {"bytes": jpeg_bytes(seed=1), "path": "one.jpg"},
                {"bytes": None, "path": "p.jpg"},
                {"bytes": jpeg_bytes(seed=3), "path": None},
            ],
            "label": [1, 0, 1],
            "weather": ["fog", None, "null"],
            "latitude": [1.0, float("nan"), 2.0],
            "longitude": [1.0, 1.0, 2.0],
        }
    )


def test_parquet_with_bytes_and_paths(tmp_path):
    pq.write_table(_parquet_table(tmp_path), tmp_path / "data.parquet")
    samples = load_samples(tmp_path / "data.parquet")
    assert [s.label for s in samples] == [1, 0, 1]
    assert samples[0].read_bytes() == jpeg_bytes(seed=1)
    assert samples[1].read_bytes() == (tmp_path / "p.jpg").read_bytes()
    assert [s.weather for s in samples] == ["fog", None, None]
    assert samples[1].latitude is None and samples[2].latitude == 2.0
    assert samples[0].file_name == "one.jpg" and samples[2].file_name == "row-000002"


def test_hf_source_loads_a_local_dataset_offline(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                  "scene_description": datasets.Value("string")})
    data = {"image": [{"bytes": jpeg_bytes(seed=i), "path": None} for i in range(4)], "label": [0, 1, 0, 1],
            "scene_description": ["road", None, "cones", ""]}
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(saved))
    samples = load_samples(f"hf:{saved}")
    assert [s.label for s in samples] == [0, 1, 0, 1]
    assert [s.description for s in samples] == ["road", None, "cones", None]
    assert samples[2].read_bytes() == jpeg_bytes(seed=2)

    parquet_dir = tmp_path / "hub_like" / "data"
    parquet_dir.mkdir(parents=True)
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(seed=9), "path": None}], "label": [1]}),
                   parquet_dir / "train-00000.parquet")
    (sample,) = load_samples(f"hf:{tmp_path / 'hub_like'}:train")
    assert sample.label == 1 and sample.read_bytes() == jpeg_bytes(seed=9)


def test_train_val_split_is_stratified_grouped_and_reproducible():
    labels = (np.arange(200) < 60).astype(int)
    rows = np.arange(200)
    train, val = train_val_split(labels, rows, 0.15, seed=3)
    assert 27 <= len(val) <= 30 and len(train) + len(val) == 200 and not set(train) & set(val)
    assert abs(labels[val].mean() - 0.3) < 0.05  # 30% positives, as in the whole
    assert np.array_equal(val, train_val_split(labels, rows, 0.15, seed=3)[1])
    assert not np.array_equal(val, train_val_split(labels, rows, 0.15, seed=4)[1])
    drives = rows // 10  # 20 drives of 10 frames
    train, val = train_val_split(labels, drives, 0.15, seed=3)
    assert not set(drives[train]) & set(drives[val]) and len(val) % 10 == 0


def test_split_errors():
    with pytest.raises(DatasetError, match="at least 4"):
        train_val_split([0, 1, 1], [0, 1, 2], 0.3, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split([0, 1] * 5, list(range(10)), 1.5, seed=0)
    with pytest.raises(DatasetError, match="single group"):
        train_val_split([0, 1] * 5, [7] * 10, 0.2, seed=0)
    with pytest.raises(DatasetError, match="at least 5 groups"):
        kfold_splits([0, 1] * 5, [0, 0, 1, 1, 2, 2, 3, 3, 0, 1], 5, seed=0)


def test_kfold_covers_everything_once_and_respects_groups():
    labels = (np.arange(100) < 40).astype(int)
    folds = kfold_splits(labels, np.arange(100), 5, seed=0)
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(100))
    assert all(labels[held].sum() == 8 for _, held in folds)
    scenes = np.arange(100) % 7
    for train, held in kfold_splits(labels, scenes, 5, seed=0):
        assert not set(scenes[train]) & set(scenes[held])


def test_spreadsheet_bom_and_boolean_labels(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "metadata.csv").write_text("\ufefffile_name,label\na.jpg,1\n", encoding="utf-8")
    assert load_samples(tmp_path)[0].label == 1
    jsonl = tmp_path / "j"
    jsonl.mkdir()
    (jsonl / "a.jpg").write_bytes(jpeg_bytes())
    (jsonl / "metadata.jsonl").write_text('{"file_name": "a.jpg", "label": true}\n')
    assert load_samples(jsonl)[0].label == 1


def test_parquet_odd_image_cells(tmp_path):
    import base64

    png = base64.b64encode(jpeg_bytes(seed=4)).decode()
    table = pa.table({"image": [png, "data:image/jpeg;base64," + png], "label": [0, 1]})
    pq.write_table(table, tmp_path / "b64.parquet")
    samples = load_samples(tmp_path / "b64.parquet")
    assert all(s.read_bytes() == jpeg_bytes(seed=4) for s in samples)
    pq.write_table(pa.table({"image": ["x" * 300], "label": [0]}), tmp_path / "long.parquet")
    with pytest.raises(DatasetError, match="unusable image path"):
        load_samples(tmp_path / "long.parquet")
    pq.write_table(pa.table({"image": [12345], "label": [0]}), tmp_path / "int.parquet")
    with pytest.raises(DatasetError, match="neither bytes nor a path"):
        load_samples(tmp_path / "int.parquet")


def test_parquet_shards_get_distinct_names(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for part in range(2):
        pq.write_table(pa.table({"image": [jpeg_bytes(seed=part)], "label": [part]}), folder / f"part-{part}.parquet")
    names = [s.file_name for s in load_samples(folder)]
    assert names == ["part-0/row-000000", "part-1/row-000000"]


def test_hf_imagefolder_and_dataset_dict(tmp_path):
    import datasets

    folder = tmp_path / "imagefolder"
    write_folder(folder, [{"file_name": f"{i}.jpg", "label": i % 2} for i in range(4)])
    samples = load_samples(f"hf:{folder}:train")
    assert sorted(s.label for s in samples) == [0, 0, 1, 1]
    assert all(s.read_bytes()[:2] == b"\xff\xd8" for s in samples)

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    split = datasets.Dataset.from_dict({"image": [{"bytes": jpeg_bytes(seed=5), "path": None}], "label": [1]},
                                       features=features)
    datasets.DatasetDict({"test": split}).save_to_disk(str(tmp_path / "dict"))
    (sample,) = load_samples(f"hf:{tmp_path / 'dict'}:test")
    assert sample.label == 1 and sample.read_bytes() == jpeg_bytes(seed=5)


def test_splits_on_few_photos_of_a_class_hold_out_more_or_say_why():
    labels = [0] * 9 + [1] * 3
    groups = np.arange(12)
    fit, held = train_val_split(labels, groups, 0.15, seed=0)   # 7 folds asked, 3 positives: 3 folds
    assert {labels[i] for i in fit} == {labels[i] for i in held} == {0, 1}
    with pytest.raises(DatasetError, match="5 folds need at least 5 photos of each class; the rarer class has 3"):
        kfold_splits(labels, groups, 5, seed=0)
