"""The training recipe and budgets of the suite's ACDC runs (one place, hashed into every run)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from data_specs.constants import InputFit, NormKind
from data_specs.task_spec import TaskSpec

# The reference script's network, whole slices resized to 128², per-volume z-score.
ACDC_RECIPE_SPEC = TaskSpec(
    spatial_dims=2,
    in_channels=1,
    out_channels=4,
    channels=(16, 32, 64, 128),
    strides=(2, 2, 2),
    num_res_units=2,
    norm=NormKind.BATCH,
    patch_size=(128, 128),
    fit=InputFit.RESIZE,
    intensity="zscore",
)

RECIPE_TRAIN: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 16,
    "local_epochs": 1,
    "lr_schedule": "poly",
    "precision": "auto",
    "channels_last": True,
    "persist_optimizer": True,
}

# Rounds (one local epoch each) that fit 12 minutes of this idle 2-core CPU for a five-site
# federation with the recipe above (measured: see benchmarks/results/suite.md).
ROUNDS_PER_12_MIN = 40


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's result except the seed.

    Args:
        table: ``inside`` or ``outside``.
        method: the method's name in the table. Example: ``"fedavg_iopfl"``.
        rounds: federated rounds (each one local epoch per site).
        spec: the task spec as JSON.
        train: TrainConfig fields.
        split: how the hospitals are split into train / validation / test patients.
        params: the method's own parameters (mu, lambda, alpha, held-out hospital).
    """

    table: str
    method: str
    rounds: int
    spec: dict[str, Any]
    train: dict[str, Any]
    split: dict[str, Any] = field(default_factory=lambda: {"val_frac": 0.1, "test_frac": 0.2})
    params: dict[str, Any] = field(default_factory=dict)

    def config_hash(self) -> str:
        """sha256 (12 hex) of the canonical JSON of this configuration."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def rounds_for(budget_minutes: float) -> int:
    """Rounds for a budget in minutes of an idle 2-core CPU (``ROUNDS_PER_12_MIN`` per 12)."""
    return max(1, round(ROUNDS_PER_12_MIN * budget_minutes / 12.0))


def recipe_spec_json(spec: TaskSpec = ACDC_RECIPE_SPEC) -> dict[str, Any]:
    """The spec as JSON for ``RunConfig.spec``."""
    return spec.model_dump(mode="json")
