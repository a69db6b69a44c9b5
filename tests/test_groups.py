"""Groups that keep drives together, label conflicts between identical images, and the leakage report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roadwork.config import NEAR_DUPLICATE_SIMILARITY
from roadwork.data.groups import check_label_conflicts, group_samples, leakage_report
from roadwork.data.records import DatasetError, Sample


def _samples(n: int, **extra_columns: list) -> list[Sample]:
    return [Sample(f"{i}.jpg", i % 2, extra={k: v[i] for k, v in extra_columns.items()}) for i in range(n)]


def _keys(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def _clusters(n_clusters: int, per_cluster: int, spread: float, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Photos of ``n_clusters`` scenes: each scene's photos are its centre plus noise of ``spread``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=generator)
    return (centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(n_clusters * per_cluster, dim,
                                                                             generator=generator))


def test_a_known_group_column_is_found_and_null_rows_stay_alone():
    drives = ["a", "a", "b", "b", None, None]
    grouping = group_samples(_samples(6, drive=drives), _keys(6), None)
    ids = grouping.ids
    assert grouping.source == "column 'drive'" and grouping.count == 4
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2] and ids[4] != ids[5]


def test_a_named_column_wins_and_a_missing_one_is_an_error():
    samples = _samples(4, drive=["a", "a", "b", "b"], city=["x", "y", "x", "y"])
    assert group_samples(samples, _keys(4), None, groups="city").ids.tolist() == [0, 1, 0, 1]
    with pytest.raises(DatasetError, match="'trip' is missing"):
        group_samples(samples, _keys(4), None, groups="trip")


def test_identical_files_are_one_group_even_for_row_splits():
    keys = _keys(5)
    keys[3] = keys[0]
    grouping = group_samples(_samples(5), keys, None, groups="rows")
    assert grouping.ids[0] == grouping.ids[3] and grouping.count == 4 and grouping.duplicate_files == 1


def test_near_duplicates_are_linked_and_distinct_photos_are_not():
    features = _clusters(n_clusters=8, per_cluster=5, spread=0.15)
    grouping = group_samples(_samples(40), _keys(40), features)
    assert grouping.count == 8 and grouping.source.startswith("near-duplicate")
    assert all(len(set(grouping.ids[c * 5:(c + 1) * 5])) == 1 for c in range(8))
    loose = _clusters(n_clusters=8, per_cluster=5, spread=2.0)  # same scene, very different photos
    assert group_samples(_samples(40), _keys(40), loose).count == 40
    # Without similarity, only identical files group.
    assert group_samples(_samples(40), _keys(40), features, similarity=None).count == 40


def test_the_threshold_is_the_documented_cosine():
    """Pairs at centred cosine 0.81 group and pairs at 0.79 do not: the default is 0.8, to +-0.01."""
    def pair(cosine: float, first_axis: int) -> torch.Tensor:
        a, b = torch.zeros(2, 32)
        a[first_axis] = 1.0
        b[first_axis], b[first_axis + 1] = cosine, (1 - cosine**2) ** 0.5
        return torch.stack([a, b])

    close, apart = pair(0.81, 0), pair(0.79, 2)
    features = torch.cat([close, apart, -close, -apart])   # mean 0, so centring leaves the cosines as built
    grouping = group_samples(_samples(8), _keys(8), features)
    assert NEAR_DUPLICATE_SIMILARITY == 0.8
    assert grouping.ids[0] == grouping.ids[1] and grouping.ids[4] == grouping.ids[5]
    assert grouping.ids[2] != grouping.ids[3] and grouping.ids[6] != grouping.ids[7]
    assert grouping.count == 6


def test_one_giant_group_is_reported():
    drive = _clusters(n_clusters=1, per_cluster=25, spread=0.01)
    features = torch.cat([drive, 3.0 * torch.randn(5, drive.shape[1])])
    grouping = group_samples(_samples(30), _keys(30), features)
    assert grouping.count == 6 and "one group holds 25 of 30" in grouping.notes[0]


def test_conflicting_labels_are_refused_with_the_rows_named_or_dropped_on_request():
    samples = [Sample("a.jpg", 1), Sample("b.jpg", 0), Sample("copy-of-a.jpg", 0), Sample("c.jpg", 1)]
    keys = ["k1", "k2", "k1", "k3"]
    with pytest.raises(DatasetError, match=r"a\.jpg \(label 1\), copy-of-a\.jpg \(label 0\)"):
        check_label_conflicts(samples, keys, "error")
    assert check_label_conflicts(samples, keys, "drop") == [1, 3]
    agreeing = [Sample("a.jpg", 1), Sample("copy.jpg", 1)]
    assert check_label_conflicts(agreeing, ["k", "k"], "error") == [0, 1]


def test_leakage_report_counts_identical_and_near_duplicate_photos():
    train = _clusters(n_clusters=6, per_cluster=1, spread=0.0, seed=1)
    other = torch.cat([train[:1], train[1:2] + 0.05 * torch.randn(1, 64), torch.randn(3, 64) * 3])
    report = leakage_report([f"t{i}" for i in range(6)], _keys(6), train,
                            ["copy", "near", "x", "y", "z"], [_keys(6)[0], "a", "b", "c", "d"], other,
                            NEAR_DUPLICATE_SIMILARITY)
    assert report["identical"] == 1 and report["identical_examples"] == [("t0", "copy")]
    assert report["near_duplicates"] == 1 and report["near_duplicate_examples"][0][:2] == ("t1", "near")
    clean = leakage_report(["t0"], ["k"], None, ["o"], ["j"], None, None)
    assert clean["identical"] == 0 and clean["near_duplicates"] == 0


def test_group_ids_are_dense_and_stable():
    grouping = group_samples(_samples(6, trip=["z", "y", "z", "x", "y", "x"]), _keys(6), None)
    assert sorted(set(grouping.ids.tolist())) == [0, 1, 2]
    assert np.array_equal(grouping.ids, group_samples(_samples(6, trip=["z", "y", "z", "x", "y", "x"]),
                                                      _keys(6), None).ids)


def test_rows_a_group_column_leaves_empty_are_grouped_by_content():
    features = torch.cat([_clusters(n_clusters=2, per_cluster=3, spread=0.05, seed=3), 3.0 * torch.randn(4, 64)])
    drives = ["a", "a", "a", None, None, None, "b", "c", "d", "e"]
    grouping = group_samples(_samples(10, drive=drives), _keys(10), features)
    ids = grouping.ids
    assert ids[3] == ids[4] == ids[5] and ids[0] != ids[3]  # the second source's near-copies stay together
    assert "3 rows without it" in grouping.source
