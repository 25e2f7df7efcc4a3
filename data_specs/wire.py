"""Wire messages shared by the aggregator and the site agent (pydantic, JSON over HTTP).

Only these shapes cross the wire besides weights bundles. Site metrics are aggregates by
construction: the schema forbids extra fields, so per-case figures or file names cannot ride along.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from data_specs.constants import (
    BundleKind,
    LrSchedule,
    OptimizerName,
    PersonalizationMethod,
    Precision,
)
from data_specs.parameters.codecs import CodecConfig as CodecConfig
from data_specs.privacy.sample_dp import DPSGDConfig, SampleDPSpent
from data_specs.privacy.secagg_wire import SecAggTask
from data_specs.round_timeline import SiteTimeline
from data_specs.task_spec import TaskSpec

_Strict = ConfigDict(extra="forbid")
_KEEPS_PERSONAL = frozenset(
    {PersonalizationMethod.IOPFL, PersonalizationMethod.FEDBN, PersonalizationMethod.DITTO}
)


class PersonalizationConfig(BaseModel):
    """Inside personalisation policy of an experiment: the one definition of its defaults and bounds.

    ``personalization.inside.InsidePolicy``, the aggregator's FedBN local keys, the simulation's
    "keeps a personal model" and the CLI choices all derive from this class.

    Args:
        method: ``none`` | ``iopfl`` | ``fedbn`` | ``fedprox`` | ``ditto``. Default ``iopfl``.
        alpha: IOP-FL moving-average weight of the old personal model. Default 0.1.
        ditto_lambda: Ditto proximity strength. Default 0.1.
        ditto_epochs: local epochs of the Ditto personal model per round. Default 1.
    """

    model_config = _Strict

    method: PersonalizationMethod = PersonalizationMethod.IOPFL
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    ditto_lambda: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.1
    ditto_epochs: Annotated[int, Field(ge=1, le=100)] = 1

    @property
    def keeps_personal(self) -> bool:
        """Whether a site keeps a personal model between rounds (IOP-FL, FedBN, Ditto)."""
        return self.method in _KEEPS_PERSONAL

    @property
    def trains_personal(self) -> bool:
        """Whether the personal model has its own training loop each round (Ditto)."""
        return self.method == PersonalizationMethod.DITTO

    @property
    def norm_layers_local(self) -> bool:
        """Whether the norm layers stay at the sites and are never averaged (FedBN)."""
        return self.method == PersonalizationMethod.FEDBN


class TrainConfig(BaseModel):
    """What a site does with the global model in one round.

    Args:
        local_epochs: passes over the local training split. Default 1.
        batch_size: local batch size. Default 4.
        lr: learning rate. Default 0.01.
        optimizer: ``sgd`` (momentum 0.9), ``sgd_nesterov`` (momentum 0.99, Nesterov), ``adam``
            or ``adamw``. Default ``sgd``.
        weight_decay: L2 weight decay. Default 0.
        fedprox_mu: FedProx proximal strength; 0 disables. Default 0.
        update_kind: upload ``full`` weights or the ``diff`` to the global model. Default ``full``.
        max_steps: cap on optimiser steps per round (None = whole epochs). Default None.
        seed: seed of the local run (the aggregator derives one per site and round).
        lr_schedule: ``constant`` or ``poly`` over all rounds of the experiment. Default
            ``constant``.
        precision: ``auto`` (bf16 autocast where supported), ``fp32`` or ``bf16``. Default
            ``auto``.
        channels_last: channels-last memory format for 2D convolutions. Default True.
        foreground_oversample: share of training patches centred on a labelled voxel
            (``fit=patch`` only). Default 0.33.
        persist_optimizer: keep the site's optimiser state across rounds (in the work dir).
            Default False.
        validate_every: validate on the local validation split every k rounds (and always in
            the last round); 1 validates every round. Default 1.
        deep_supervision: auxiliary losses on this many lower decoder levels (nnU-Net style,
            site-local heads; the model's layout is unchanged); 0 disables. Default 0.
        dp_sgd: sample-level DP-SGD with Opacus in the local training (per-sample clipping
            and noise; needs ``spec.norm = "instance"``). Default None (off).
    """

    model_config = _Strict

    local_epochs: Annotated[int, Field(ge=1, le=1000)] = 1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 0.01
    optimizer: OptimizerName = OptimizerName.SGD
    weight_decay: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    fedprox_mu: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0
    update_kind: BundleKind = BundleKind.FULL
    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    foreground_oversample: Annotated[float, Field(ge=0.0, le=1.0)] = 0.33
    persist_optimizer: bool = False
    validate_every: Annotated[int, Field(ge=1, le=100_000)] = 1
    deep_supervision: Annotated[int, Field(ge=0, le=6)] = 0
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    dp_sgd: DPSGDConfig | None = None


class TaskAssignment(BaseModel):
    """A unit of work for one site: train round ``round`` of ``experiment_id``.

    ``local_keys`` are state-dict keys the server does not average (FedBN); the site keeps its
    own values for them.
    """

    model_config = _Strict

    task_id: str
    experiment_id: str
    round: Annotated[int, Field(ge=1)]
    spec: TaskSpec
    spec_hash: str
    model_sha256: str
    model_size: Annotated[int, Field(ge=0)]
    train: TrainConfig
    local_keys: list[str] = Field(default_factory=list)
    deadline: datetime | None = None
    total_rounds: Annotated[int, Field(ge=1)] | None = None
    # Client-level DP: the site clips its update W − θ to this L2 norm before upload.
    clip_norm: Annotated[float, Field(gt=0.0)] | None = None
    # Secure aggregation: the site uploads a masked ring vector through the protocol steps.
    secagg: SecAggTask | None = None


class EnrollRequest(BaseModel):
    """A site exchanges its one-time enrollment token for a site token.

    ``max_samples``, when given, is the most training cases the site will ever train on; the
    aggregator caps every sample count the site reports at it (FedAvg weight).
    ``accept_experiments`` is the hospital's standing consent (``"*"``, experiment ids or
    ``"researcher:<name>"``); None leaves the site's policy as it is.
    """

    model_config = _Strict

    enrollment_token: Annotated[str, Field(min_length=8, max_length=512)]
    max_samples: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    accept_experiments: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=250)]], Field(max_length=100)]
        | None
    ) = None


class ConsentPolicy(BaseModel):
    """``PUT /sites/me/consent-policy`` body: the hospital's standing consent.

    Args:
        accept: ``"*"`` (every experiment), experiment ids or ``"researcher:<name>"``;
            empty: the hospital approves experiments one by one.
    """

    model_config = _Strict

    accept: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=250)]], Field(max_length=100)
    ] = Field(default_factory=list)


class EnrollResponse(BaseModel):
    """The site token is shown once; the server keeps only its hash."""

    model_config = _Strict

    site_id: str
    site_name: str
    site_token: str


class SiteMetrics(BaseModel):
    """Aggregate metrics a site may report with an update. Nothing per case, no file names.

    Args:
        train_loss: mean training loss of the round.
        val_dice: mean Dice over foreground classes on the local validation split.
        val_dice_per_class: mean Dice per foreground class.
        val_hd95: mean 95th-percentile Hausdorff distance (voxels or mm).
        num_val_cases: validation cases behind the figures.
        train_seconds: wall time of local training.
        val_dice_global: mean Dice of the global model the site received, on its validation split.
        val_dice_personal: mean Dice of the site's personal model after this round, same split.
        val_round: the round whose locally trained model the validation figures score (None
            when this update carries none).
        timeline: where the site's round went, phase by phase (``SiteTimeline``).
        dp_unclipped: client-level DP with adaptive clipping: whether the update's norm was at
            most the round's clip norm (one bit; the aggregator only uses a noisy count).
        dp_sgd: sample-level DP-SGD: the site accountant's (ε, δ) for this round and in total.
    """

    model_config = _Strict

    train_loss: float | None = None
    val_dice: float | None = None
    val_dice_global: float | None = None
    val_dice_personal: float | None = None
    val_dice_per_class: list[float] | None = Field(default=None, max_length=64)
    val_hd95: float | None = None
    num_val_cases: Annotated[int, Field(ge=0)] | None = None
    train_seconds: Annotated[float, Field(ge=0.0)] | None = None
    val_round: Annotated[int, Field(ge=1)] | None = None
    timeline: SiteTimeline | None = None
    dp_unclipped: bool | None = None
    dp_sgd: SampleDPSpent | None = None


class UpdateReceipt(BaseModel):
    """The aggregator's answer to an upload."""

    model_config = _Strict

    task_id: str
    sha256: str
    accepted: bool
    duplicate: bool = False
    reason: str | None = None


class FailureReport(BaseModel):
    """A site tells the aggregator it cannot finish a task. Short reason, no patient data."""

    model_config = _Strict

    reason: Annotated[str, Field(min_length=1, max_length=500)]
