"""The site data cache: later tasks reuse the pre-processed cases, bit for bit as a fresh build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from data_specs.constants import SplitName
from data_specs.imaging.datasets import build_dataset
from data_specs.manifests.manifest import load_manifest
from site_agent.training.data_cache import SiteDataCache, manifest_fingerprint
from site_agent.training.datasets import load_split
from tests.site_agent.conftest import TINY, write_site


def _items(dataset, n: int = 4) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(n)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(
        x.keys() == y.keys()
        and all(
            torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k] for k in x
        )
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return write_site(tmp_path / "site", n_train=4, n_val=2, n_test=0)


def _load(manifest, cache, *, seed: int, split=SplitName.TRAINING, spec=TINY):
    train = split == SplitName.TRAINING
    fit = "random" if train else "crop"
    return load_split(manifest, spec, split, train=train, seed=seed, fit=fit, cache=cache)


def test_memory_hit_draws_as_a_fresh_build_for_any_seed(manifest_path: Path, tmp_path) -> None:
    manifest = load_manifest(manifest_path)
    cache = SiteDataCache(tmp_path / "cache")
    first = _load(manifest, cache, seed=1)
    again = _load(manifest, cache, seed=7)
    assert (cache.stats.misses, cache.stats.memory_hits) == (1, 1)
    assert again.data is first.data  # the pre-processed items are not rebuilt
    for seed, got in ((7, again), (1, _load(manifest, cache, seed=1))):
        fresh = build_dataset(manifest, TINY, "training", train=True, seed=seed, fit="random")
        assert _same(_items(got), _items(fresh))  # same augmentation draws, same bits
    other = build_dataset(manifest, TINY, "training", train=True, seed=8, fit="random")
    assert not _same(_items(again), _items(other))  # the check above can fail


def test_disk_tier_serves_a_new_process(manifest_path: Path, tmp_path) -> None:
    manifest = load_manifest(manifest_path)
    _load(manifest, SiteDataCache(tmp_path / "cache"), seed=3)
    _load(manifest, SiteDataCache(tmp_path / "cache"), seed=3, split=SplitName.VALIDATION)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    restarted = SiteDataCache(tmp_path / "cache")
    got = _load(manifest, restarted, seed=5)
    val = _load(manifest, restarted, seed=5, split=SplitName.VALIDATION)
    assert restarted.stats.disk_hits == 2 and restarted.stats.misses == 0
    fresh = build_dataset(manifest, TINY, "training", train=True, seed=5, fit="random")
    assert _same(_items(got), _items(fresh))
    fresh_val = build_dataset(manifest, TINY, "validation", train=False, seed=5)
    assert _same(_items(val, 2), _items(fresh_val, 2))


def test_a_changed_scan_or_spec_is_a_miss(manifest_path: Path, tmp_path) -> None:
    manifest = load_manifest(manifest_path)
    cache = SiteDataCache(tmp_path / "cache")
    _load(manifest, cache, seed=0)
    before = manifest_fingerprint(manifest)
    scan = manifest.resolve(next(manifest.iter_cases("training"))).image
    st = scan.stat()
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    assert manifest_fingerprint(manifest) != before
    _load(manifest, cache, seed=0)
    assert cache.stats.misses == 2
    _load(manifest, cache, seed=0, spec=TINY.model_copy(update={"patch_size": (16, 16)}))
    assert cache.stats.misses == 3 and cache.stats.memory_hits == 0


def test_every_channel_file_and_a_re_pointed_symlink_count(tmp_path: Path) -> None:
    import json
    import shutil

    root = tmp_path / "site"
    write_site(root, n_train=2, n_val=0, n_test=0)
    data = json.loads((root / "dataset.json").read_text())
    case = data["training"][0]
    second = case["image"].replace(".nii.gz", "_ch1.nii.gz")
    shutil.copy(root / case["image"], root / second)
    case["image"] = [case["image"], second]  # two channel files
    data["modality"] = {"0": "MRI", "1": "MRI"}
    for other in data["training"][1:]:
        extra = other["image"].replace(".nii.gz", "_ch1.nii.gz")
        shutil.copy(root / other["image"], root / extra)
        other["image"] = [other["image"], extra]
    (root / "dataset.json").write_text(json.dumps(data))
    manifest = load_manifest(root / "dataset.json")
    before = manifest_fingerprint(manifest)
    assert before is not None and manifest_fingerprint(manifest) == before  # stable
    st = (root / second).stat()
    os.utime(root / second, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the 2nd channel
    changed = manifest_fingerprint(manifest)
    assert changed != before

    label = root / case["label"]
    copy = root / "labels" / "copy.nii.gz"
    shutil.copy2(label, copy)  # same bytes, size and modification time: another file
    moved = root / "labels" / "moved.nii.gz"
    label.rename(moved)
    label.symlink_to(moved)
    pointing = manifest_fingerprint(manifest)
    assert pointing == changed  # the link points at the very same file: still a hit
    label.unlink()
    label.symlink_to(copy)
    assert manifest_fingerprint(manifest) not in (changed, None)  # re-pointed: a miss


def test_budget_and_torn_files(manifest_path: Path, tmp_path) -> None:
    manifest = load_manifest(manifest_path)
    none_in_memory = SiteDataCache(tmp_path / "cache", memory_budget_bytes=0)
    _load(manifest, none_in_memory, seed=0)
    assert none_in_memory.memory_bytes == 0
    for entry in (tmp_path / "cache").glob("*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    got = _load(manifest, none_in_memory, seed=0)
    assert none_in_memory.stats.misses == 2 and none_in_memory.stats.disk_hits == 0
    fresh = build_dataset(manifest, TINY, "training", train=True, seed=0, fit="random")
    assert _same(_items(got), _items(fresh))
    memory_only = SiteDataCache(None)
    _load(manifest, memory_only, seed=0)
    assert memory_only.memory_bytes > 0
    memory_only.budget = memory_only.memory_bytes - 1  # the next entry pushes the first out
    _load(manifest, memory_only, seed=0, split=SplitName.VALIDATION)
    _load(manifest, memory_only, seed=0)
    assert memory_only.stats.misses == 3
