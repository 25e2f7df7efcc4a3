"""Split the cases of one or more manifests into virtual sites: IID, non-IID, unequal sizes.

McMahan et al. (2017) compare an IID partition with a pathological non-IID one in which each
client holds shards of only a few classes. For segmentation the natural axis of heterogeneity is
the source (scanner, hospital), so the non-IID schemes here sort the pooled cases by source and
hand each virtual site a few contiguous shards.
"""

from __future__ import annotations

import itertools
import os
import random
from enum import StrEnum
from pathlib import Path

from data_specs.constants import SplitName
from data_specs.errors import ManifestError
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, save_manifest


class PartitionScheme(StrEnum):
    """How ``partition_manifests`` deals cases to virtual sites."""

    NATURAL = "natural"  # one site per manifest, unchanged
    IID = "iid"
    NONIID = "noniid"
    NONIID_UNEQUAL = "noniid-unequal"


def partition_manifests(
    manifests: list[DatasetManifest],
    scheme: PartitionScheme | str,
    num_sites: int,
    *,
    seed: int = 0,
    shards_per_site: int = 2,
) -> list[DatasetManifest]:
    """Deal the cases of ``manifests`` into ``num_sites`` virtual site manifests.

    Args:
        manifests: source manifests (loaded, so their roots are known); they must share labels,
            channels and spatial dims. Example: the three synthetic hospitals.
        scheme: ``natural``, ``iid``, ``noniid`` or ``noniid-unequal``.
        num_sites: number of virtual sites (ignored for ``natural``). Example: ``4``.
        seed: seed of the shuffles. Default 0.
        shards_per_site: shards each site gets under the non-IID schemes. Default 2.

    Returns:
        New manifests with ``data_root`` set to the sources' common folder and ``site_id``
        ``virtual_<i>``. Each has at least one case in every split its sources declare.

    Raises:
        ManifestError: incompatible sources, or too few cases for ``num_sites``.
    """
    scheme = PartitionScheme(scheme)
    if not manifests:
        raise ManifestError("partition: expected at least one manifest, found none")
    if scheme == PartitionScheme.NATURAL:
        return list(manifests)
    first = manifests[0]
    for m in manifests[1:]:
        if (m.labels, m.modality, m.spatial_dims, m.label_mapping) != (
            first.labels,
            first.modality,
            first.spatial_dims,
            first.label_mapping,
        ):
            raise ManifestError(
                f"partition: manifest {m.site_id} differs from {first.site_id} in labels, "
                "label mapping, channels or spatial dims; expected them to describe the same task"
            )
    if num_sites < 1:
        raise ManifestError(f"partition: expected num_sites >= 1, found {num_sites}")
    root = Path(os.path.commonpath([str(m.root.resolve()) for m in manifests]))
    rng = random.Random(seed)
    per_split: dict[SplitName, list[list[CaseEntry]]] = {}
    for split in SplitName:
        pooled = [
            (src, _rebase(m, case, root))
            for src, m in enumerate(manifests)
            for case in m.iter_cases(split)
        ]
        if not pooled:
            continue
        if len(pooled) < num_sites:
            raise ManifestError(
                f"partition: split {split} has {len(pooled)} cases, expected at least one per "
                f"site ({num_sites} sites)"
            )
        per_split[split] = _deal(pooled, scheme, num_sites, rng, shards_per_site)
    out: list[DatasetManifest] = []
    for i in range(num_sites):
        fields = first.model_dump(
            exclude={"training", "validation", "test", "site_id", "data_root"}
        )
        site = DatasetManifest(
            **fields,
            site_id=f"virtual_{i}",
            data_root=str(root),
            training=per_split[SplitName.TRAINING][i],
            validation=per_split[SplitName.VALIDATION][i]
            if SplitName.VALIDATION in per_split
            else None,
            test=per_split[SplitName.TEST][i] if SplitName.TEST in per_split else None,
        )
        out.append(site)
    return out


def write_partition(manifests: list[DatasetManifest], out_dir: Path) -> list[Path]:
    """Save virtual site manifests as ``out_dir/<site_id>/dataset.json``; returns the paths."""
    paths = []
    for m in manifests:
        folder = out_dir / m.site_id
        folder.mkdir(parents=True, exist_ok=True)
        save_manifest(m, folder / "dataset.json")
        paths.append(folder / "dataset.json")
    return paths


def _rebase(manifest: DatasetManifest, case: CaseEntry, root: Path) -> CaseEntry:
    def rel(p: str) -> str:
        return manifest.resolve_path(p).relative_to(root).as_posix()

    image = rel(case.image) if isinstance(case.image, str) else [rel(p) for p in case.image]
    return CaseEntry(image=image, label=rel(case.label) if case.label else None)


def _deal(
    pooled: list[tuple[int, CaseEntry]],
    scheme: PartitionScheme,
    n: int,
    rng: random.Random,
    shards_per_site: int,
) -> list[list[CaseEntry]]:
    if scheme == PartitionScheme.IID:
        cases = [c for _, c in pooled]
        rng.shuffle(cases)
        return [cases[i::n] for i in range(n)]
    # Sort by source so a contiguous shard holds few sources; shuffle within a source first.
    order = sorted(range(len(pooled)), key=lambda i: (pooled[i][0], rng.random()))
    cases = [pooled[i][1] for i in order]
    num_shards = min(len(cases), n * shards_per_site)
    if scheme == PartitionScheme.NONIID_UNEQUAL:
        weights = [rng.lognormvariate(0.0, 0.8) for _ in range(num_shards)]
    else:
        weights = [1.0] * num_shards
    bounds = _cut_points(len(cases), weights)
    shards = [cases[a:b] for a, b in itertools.pairwise(bounds)]
    shard_ids = list(range(num_shards))
    rng.shuffle(shard_ids)
    sites: list[list[CaseEntry]] = [[] for _ in range(n)]
    for k, shard in enumerate(shard_ids):
        sites[k % n].extend(shards[shard])
    return sites


def _cut_points(total: int, weights: list[float]) -> list[int]:
    # Every shard gets at least one case; the rest follows the weights.
    spare = total - len(weights)
    scale = sum(weights)
    sizes = [1 + int(spare * w / scale) for w in weights]
    for i in range(total - sum(sizes)):
        sizes[i % len(sizes)] += 1
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return bounds
