"""Virtual-site partitions: every case dealt once, IID mixes sources, non-IID does not."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from data_specs.errors import ManifestError
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, load_manifest
from data_specs.sources.partition import partition_manifests, write_partition


def _source(root: Path, name: str, n_train: int, n_test: int) -> DatasetManifest:
    folder = root / name
    folder.mkdir(parents=True)
    return DatasetManifest(
        name=name,
        site_id=name,
        spatial_dims=2,
        modality={"0": "MRI"},
        labels={"0": "background", "1": "organ"},
        training=[
            CaseEntry(image=f"img_{i}.nii.gz", label=f"lab_{i}.nii.gz") for i in range(n_train)
        ],
        test=[CaseEntry(image=f"timg_{i}.nii.gz", label=f"tlab_{i}.nii.gz") for i in range(n_test)],
    ).bind(folder)


def _sources_of(m: DatasetManifest) -> Counter[str]:
    return Counter(c.image.split("/")[0] for c in m.training)


@pytest.fixture
def sources(tmp_path: Path) -> list[DatasetManifest]:
    return [_source(tmp_path, f"hosp{i}", 12, 4) for i in range(3)]


def test_every_case_dealt_exactly_once(sources: list[DatasetManifest]) -> None:
    for scheme in ("iid", "noniid", "noniid-unequal"):
        parts = partition_manifests(sources, scheme, 4, seed=1)
        dealt = [(m.data_root, c.image) for m in parts for c in m.training]
        assert len(dealt) == len(set(dealt)) == 36
        assert all(m.test for m in parts)


def test_iid_mixes_sources_and_noniid_does_not(sources: list[DatasetManifest]) -> None:
    iid = partition_manifests(sources, "iid", 3, seed=0)
    noniid = partition_manifests(sources, "noniid", 3, seed=0, shards_per_site=1)
    assert all(len(_sources_of(m)) == 3 for m in iid)
    assert all(len(_sources_of(m)) == 1 for m in noniid)
    assert sorted(len(m.training) for m in iid) == [12, 12, 12]


def test_unequal_sizes_differ_and_seed_is_deterministic(sources: list[DatasetManifest]) -> None:
    a = partition_manifests(sources, "noniid-unequal", 3, seed=5)
    b = partition_manifests(sources, "noniid-unequal", 3, seed=5)
    assert [m.training for m in a] == [m.training for m in b]
    assert len({len(m.training) for m in a}) > 1


def test_paths_resolve_to_the_source_files(sources: list[DatasetManifest], tmp_path: Path) -> None:
    parts = partition_manifests(sources, "iid", 2, seed=0)
    paths = write_partition(parts, tmp_path / "virtual")
    loaded = load_manifest(paths[0])
    case = loaded.training[0]
    assert loaded.resolve(case).image.parent.parent == tmp_path.resolve()


def test_too_few_cases_is_a_clear_error(sources: list[DatasetManifest]) -> None:
    with pytest.raises(ManifestError, match="at least one per site"):
        partition_manifests(sources, "iid", 20, seed=0)
