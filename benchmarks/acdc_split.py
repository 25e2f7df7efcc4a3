"""More sites than ACDC has hospitals: split each hospital's patients into several sites.

``secagg_round_bench --sites 20`` runs 20 site agents on the same task and data as its 5-site
run: each of the five ACDC hospitals (diagnosis groups) becomes ``parts`` sites, its training
(and test) patients dealt round-robin in patient order, both frames of a patient at the same
site. The model, the update size and each site's local steps stay those of the 5-site run;
only the number of sites changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from data_specs.manifests.manifest import CaseEntry, DatasetManifest


def patient_of(entry: CaseEntry) -> str:
    """The patient of an ACDC entry: ``patient001`` for ``patient001_frame01.nii.gz``."""
    return Path(entry.image_files[0]).name.split("_frame", 1)[0]


def _deal(entries: list[CaseEntry] | None, parts: int) -> list[list[CaseEntry]]:
    patients = sorted({patient_of(e) for e in entries or []})
    turn = {p: i % parts for i, p in enumerate(patients)}
    dealt: list[list[CaseEntry]] = [[] for _ in range(parts)]
    for e in entries or []:
        dealt[turn[patient_of(e)]].append(e)
    return dealt


def split_hospitals(manifests: Mapping[str, Path], parts: int, out: Path) -> dict[str, Path]:
    """Write ``parts`` site manifests per hospital manifest, split by patient.

    Args:
        manifests: hospital name → its ``dataset.json``. Example: ``{"DCM": Path(...)}``.
        parts: sites per hospital, at least 1.
        out: folder for the new manifests (``out/<site_id>/dataset.json``).

    Returns:
        Site name (``<hospital>-<k>``, k from 1) → manifest path, hospitals in the given order.

    Raises:
        ValueError: ``parts`` < 1, or a hospital has fewer training patients than ``parts``.
    """
    from data_specs.manifests.manifest import load_manifest, save_manifest

    if parts < 1:
        raise ValueError(f"expected at least 1 site per hospital, found {parts}")
    sites: dict[str, Path] = {}
    for name, path in manifests.items():
        hospital = load_manifest(path)
        training = _deal(hospital.training, parts)
        if any(not t for t in training):
            have = len({patient_of(e) for e in hospital.training})
            raise ValueError(
                f"{name}: {have} training patients cannot make {parts} sites of one patient or more"
            )
        test = _deal(hospital.test, parts)
        for k in range(parts):
            site: DatasetManifest = hospital.model_copy(
                update={
                    "name": f"{hospital.name}-{k + 1}",
                    "site_id": f"{hospital.site_id}_{k + 1}",
                    "training": training[k],
                    "validation": None,
                    "test": test[k] or None,
                }
            )
            folder = out / site.site_id
            folder.mkdir(parents=True, exist_ok=True)
            save_manifest(site, folder / "dataset.json")
            sites[f"{name}-{k + 1}"] = folder / "dataset.json"
    return sites
