"""The site's data: manifest validation at start-up and trainers built over the manifest's splits."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_specs.constants import InputFit, SplitName
from data_specs.errors import DataSpecError
from data_specs.task_spec import TaskSpec
from data_specs.wire import TaskAssignment
from site_agent.background import on_thread
from site_agent.errors import ManifestRejectedError, TrainingError
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings
from site_agent.training.data_cache import (
    SiteDataCache,
    cache_key,
    code_fingerprint,
    manifest_fingerprint,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from data_specs.imaging.transforms import FitMode
    from data_specs.manifests.manifest import DatasetManifest
    from data_specs.manifests.validate import ValidationReport
    from site_agent.training.trainer import SiteTrainer

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
    from data_specs.manifests.manifest import load_manifest
    from data_specs.manifests.validate import validate_manifest

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
    cache: SiteDataCache | None = None,
) -> Dataset | None:
    """The dataset of one split (``data_specs.imaging.datasets.build_dataset``), None when not declared.

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
        cache: reuse the split's pre-processed cases across calls (``SiteDataCache``). Default
            None (read the scans every time).

    Raises:
        TrainingError: the manifest does not fit the task spec, or a scan does not load.
    """
    from data_specs.imaging.datasets import build_dataset

    if split not in manifest.declared_splits():
        return None
    check_task_fits(manifest, spec)
    if spec.fit == InputFit.RESIZE and fit != "none":
        # Whole slices resized to the patch size, un-augmented: the trainer augments batches.
        fit, augment, foreground_ratio = "resize", False, 0.0
    else:
        augment = None

    def build_from(view: DatasetManifest) -> Dataset:
        return build_dataset(
            view,
            spec,
            split,
            train=train,
            seed=seed,
            fit=fit,
            augment=augment,
            foreground_ratio=foreground_ratio,
        )

    def build() -> Dataset:
        return build_from(manifest)

    def empty() -> Dataset:  # the same pipeline over no cases (a disk-cache hit)
        return build_from(manifest.model_copy(update={split.value: []}))

    try:
        if cache is None:
            return build()
        fingerprint = manifest_fingerprint(manifest)
        if fingerprint is None:
            return build()
        key = cache_key(
            manifest=fingerprint,
            code=code_fingerprint(),
            spec=spec.spec_hash(),
            split=split.value,
            train=train,
            fit=f"{fit}/foreground={foreground_ratio}",
        )
        return cache.dataset(key, seed=seed, build=build, template=empty)
    except DataSpecError as exc:
        # The cause names a scan file: keep it out of logs; `fedseg data validate` shows it.
        raise TrainingError(
            f"the local {split} split did not load ({type(exc).__name__}); run "
            "`fedseg data validate` on the manifest for the details"
        ) from exc


def validates_in_round(task: TaskAssignment) -> bool:
    """Whether the site validates in this task's round: every ``validate_every`` rounds, and
    always in the experiment's last round.

    Args:
        task: the assignment. Example: round 4 with ``validate_every=2`` validates.
    """
    every = task.train.validate_every
    last = task.total_rounds is not None and task.round >= task.total_rounds
    return every <= 1 or task.round % every == 0 or last


def check_task_fits(manifest: DatasetManifest, spec: TaskSpec) -> None:
    """Refuse a task whose spec disagrees with the site's data (channels, classes, dimensions).

    Raises:
        TrainingError: naming what differs.
    """
    from data_specs.imaging.datasets import check_compatible

    try:
        check_compatible(manifest, spec)
    except DataSpecError as exc:
        raise TrainingError(str(exc)) from exc


class ManifestTrainers:
    """Trainer factory over the site's manifest: one trainer per task, seeded by the task.

    The pre-processed cases of each split are cached across tasks (``SiteDataCache``: in
    memory up to ``data_cache_memory_mb``, on disk in ``<work dir>/cache/data``). The
    validation scans are prepared once per task spec, on a background thread (one reader)
    from the first task on, and handed to the trainer in the rounds that validate
    (``TrainConfig.validate_every``): the first validating round does not wait for them.

    Args:
        settings: site settings (manifest, device, workers, data cache).
        workdir: the work dir (TensorBoard folder, data cache).
    """

    def __init__(self, settings: SiteSettings, workdir: WorkDir) -> None:
        from data_specs.manifests.manifest import load_manifest

        self.settings = settings
        self.workdir = workdir
        self.manifest = load_manifest(settings.require_manifest())
        self.device = settings.resolve_device()
        # Optimiser states of the experiments this site trains (``persist_optimizer``), kept in
        # memory between rounds; a restart begins afresh.
        self.optimizer_states: dict[str, dict[str, Any]] = {}
        # Whole validation scans, prepared once per task spec, in the background.
        self._eval_cases: tuple[str, Future[list[Any]]] | None = None
        budget = settings.data_cache_memory_mb << 20
        folder = workdir.root / "cache" / "data" if settings.data_cache_disk else None
        self.cache = (
            SiteDataCache(folder, memory_budget_bytes=budget)
            if budget > 0 or folder is not None
            else None
        )

    def __call__(self, task: TaskAssignment) -> SiteTrainer:
        from site_agent.training.trainer import SiteTrainer

        spec, seed = task.spec, task.train.seed
        if not self.manifest.training:
            raise TrainingError(
                "the manifest lists no training cases (an outside site's manifest): an outside "
                "site adapts with `fedseg site adapt` instead of training"
            )
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
            cache=self.cache,
        )
        val = None
        if SplitName.VALIDATION in self.manifest.declared_splits():
            cases = self._validation_cases(spec)  # started at the first task
            if validates_in_round(task):
                try:
                    val = cases.result()
                except BaseException:
                    self._eval_cases = None  # the next validating round reads them again
                    raise
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

    def _validation_cases(self, spec: TaskSpec) -> Future[list[Any]]:
        """Whole validation scans in their own geometry (as `fedseg site evaluate` scores),
        prepared once per task spec on a background thread and kept for the following rounds.

        One reader thread: the scans load beside a training, not in its place.
        """
        from site_agent.clinic.scan_evaluation import load_eval_cases

        key = spec.spec_hash()
        if self._eval_cases is None or self._eval_cases[0] != key:
            manifest = self.manifest

            def load() -> list[Any]:
                return load_eval_cases(manifest, spec, SplitName.VALIDATION, workers=1)

            self._eval_cases = (key, on_thread(load, "fedseg-val-scans"))
        return self._eval_cases[1]
