"""The site's data: manifest validation at start-up and trainers built over the manifest's splits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_specs.constants import InputFit, SplitName
from data_specs.errors import DataSpecError
from data_specs.task_spec import TaskSpec
from data_specs.wire import TaskAssignment
from site_agent.errors import ManifestRejectedError, TrainingError
from site_agent.settings import SiteSettings
from site_agent.trainer import SiteTrainer
from site_agent.workdir import WorkDir

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from data_specs.manifest import DatasetManifest
    from data_specs.transforms import FitMode
    from data_specs.validate import ValidationReport

log = logging.getLogger(__name__)


def format_report(report: ValidationReport) -> str:
    """The validation report as text for the operator's console (never sent anywhere)."""
    lines = [f"manifest {report.manifest}: {report.cases} cases, {report.files} files read"]
    for p in report.problems:
        lines.append(f"  {p.file}: {p.check}: expected {p.expected}, found {p.found}")
    lines.append("OK" if report.ok else f"{len(report.problems)} problem(s)")
    return "\n".join(lines)


def check_manifest(path: str | Path, *, workers: int | None = None) -> DatasetManifest:
    """Validate the manifest against its files; refuse to go on when anything is wrong.

    Args:
        path: the ``dataset.json``. Example: ``"/data/site_1/dataset.json"``.
        workers: reader processes for the validation. Default None (up to 8; small sites
            are read in this process).

    Returns:
        The loaded manifest.

    Raises:
        ManifestRejectedError: with the full report in ``.report``.
    """
    from data_specs.manifest import load_manifest
    from data_specs.validate import validate_manifest

    report = validate_manifest(path, workers=workers)
    if not report.ok:
        raise ManifestRejectedError(
            f"the dataset manifest failed validation with {len(report.problems)} problem(s); "
            "fix them and start again",
            report=format_report(report),
        )
    return load_manifest(path)


def load_split(
    manifest: DatasetManifest,
    spec: TaskSpec,
    split: SplitName,
    *,
    train: bool,
    seed: int,
    fit: FitMode = "crop",
    foreground_ratio: float = 0.0,
) -> Dataset | None:
    """The dataset of one split (``data_specs.datasets.build_dataset``), None when not declared.

    Args:
        manifest: the site's manifest.
        spec: the task spec.
        split: which split. Example: ``SplitName.VALIDATION``.
        train: augment (training use). Example: ``True``.
        seed: augmentation seed. Example: ``TrainConfig.seed``.
        fit: ``random`` patches (training), ``crop`` to the patch size (validation patches)
            or ``none`` (whole scans, for sliding-window evaluation). Default ``crop``.
            A task whose spec says ``fit = resize`` always gets whole slices (or volumes)
            resized to the patch size, un-augmented: its trainer augments whole batches.
        foreground_ratio: share of random patches centred on a labelled voxel. Default 0.

    Raises:
        TrainingError: the manifest does not fit the task spec, or a scan does not load.
    """
    from data_specs.datasets import build_dataset

    if split not in manifest.declared_splits():
        return None
    check_task_fits(manifest, spec)
    try:
        if spec.fit == InputFit.RESIZE and fit != "none":
            return build_dataset(
                manifest, spec, split, train=train, seed=seed, fit="resize", augment=False
            )
        return build_dataset(
            manifest,
            spec,
            split,
            train=train,
            seed=seed,
            fit=fit,
            foreground_ratio=foreground_ratio,
        )
    except DataSpecError as exc:
        # The cause names a scan file: keep it out of logs; `fedseg data validate` shows it.
        raise TrainingError(
            f"the local {split} split did not load ({type(exc).__name__}); run "
            "`fedseg data validate` on the manifest for the details"
        ) from exc


def check_task_fits(manifest: DatasetManifest, spec: TaskSpec) -> None:
    """Refuse a task whose spec disagrees with the site's data (channels, classes, dimensions).

    Raises:
        TrainingError: naming what differs.
    """
    from data_specs.datasets import check_compatible

    try:
        check_compatible(manifest, spec)
    except DataSpecError as exc:
        raise TrainingError(str(exc)) from exc


class ManifestTrainers:
    """Trainer factory over the site's manifest: one trainer per task, seeded by the task.

    Args:
        settings: site settings (manifest, device, workers).
        workdir: the work dir (TensorBoard folder).
    """

    def __init__(self, settings: SiteSettings, workdir: WorkDir) -> None:
        from data_specs.manifest import load_manifest

        self.settings = settings
        self.workdir = workdir
        self.manifest = load_manifest(settings.require_manifest())
        self.device = settings.resolve_device()
        # Optimiser states of the experiments this site trains (``persist_optimizer``), kept in
        # memory between rounds; a restart begins afresh.
        self.optimizer_states: dict[str, dict[str, Any]] = {}
        # The last task's prepared splits, reused while the spec and data options stay the same:
        # later rounds of an experiment re-read no scan (the augmentation is re-seeded per task).
        self._cached: tuple[Any, Any, Any] | None = None

    def __call__(self, task: TaskAssignment) -> SiteTrainer:
        spec, seed = task.spec, task.train.seed
        if not self.manifest.training:
            raise TrainingError(
                "the manifest lists no training cases (an outside site's manifest): an outside "
                "site adapts with `fedseg site adapt` instead of training"
            )
        key = (spec.spec_hash(), task.train.foreground_oversample)
        if self._cached is not None and self._cached[0] == key:
            train, val = self._cached[1], self._cached[2]
            transform = getattr(train, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=seed)
        else:
            train, val = self._load(task)
            self._cached = (key, train, val)
        assert train is not None  # a manifest always declares training
        return SiteTrainer(
            spec,
            train,
            val,
            device=self.device,
            tensorboard_dir=self.workdir.tensorboard_dir,
            num_workers=self.settings.num_workers,
            optimizer_states=self.optimizer_states,
        )

    def _load(self, task: TaskAssignment) -> tuple[Any, Any]:
        spec, seed = task.spec, task.train.seed
        # Random patches: the model sees the whole field of view that sliding-window inference
        # and `fedseg site evaluate` cover, not only the centre.
        train = load_split(
            self.manifest,
            spec,
            SplitName.TRAINING,
            train=True,
            seed=seed,
            fit="random",
            foreground_ratio=task.train.foreground_oversample,
        )
        val = None
        if SplitName.VALIDATION in self.manifest.declared_splits():
            from site_agent.scan_evaluation import load_eval_cases

            # Validation scores whole scans in their own geometry, as `fedseg site evaluate`.
            val = load_eval_cases(self.manifest, spec, SplitName.VALIDATION)
        return train, val
