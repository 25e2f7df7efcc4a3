"""Schemas of experiments and grants (the ``ExperimentCreate`` of the wire contract).

``StrategyConfig`` lives in ``data_specs.strategy_params`` (re-exported here).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from data_specs.plan import PlanOptions
from data_specs.privacy import PrivacyConfig
from data_specs.strategy_params import StrategyConfig as StrategyConfig
from data_specs.task_spec import TaskSpec
from data_specs.wire import TrainConfig

_Strict = ConfigDict(extra="forbid", allow_inf_nan=False)


class ExperimentCreate(BaseModel):
    """``POST /experiments`` body.

    Args:
        name: display name. Example: ``"acdc-fedavg"``.
        spec: the task and network spec.
        rounds: federated rounds to run. Example: ``50``.
        fraction: C, the fraction of participating sites sampled per round. Default 1.0.
        min_sites: fewest approved sites to start, and fewest sampled sites and accepted
            updates a round needs. Default 2: one hospital's weights never go out as a "global"
            model unless the experiment sets 1 explicitly.
        sites: participating site ids; default every enrolled site when the experiment starts.
        train: what each site does in a round.
        strategy: server aggregation rule. Default FedAvg.
        round_deadline_s: seconds a round waits for its sites. Default 3600.
        max_round_retries: re-samplings of a round that missed ``min_sites``. Default 2.
        update_norm_bound: largest L2 norm of an update ``W - θ`` (outside ``local_keys``);
            None disables this fixed check. Default None.
        robust_norm_multiple: on top of any fixed bound, updates whose norm exceeds this multiple
            of the round's median update norm are scaled down to it before averaging (a
            poisoned ×100 update then weighs like an honest one); None disables it. Default 3.
        min_update_cosine: with 3 or more updates in a round, an update whose cosine similarity
            with the round's coordinate-wise median update is below this is left out of the
            average (a sign-flipped update points against it); at most a minority of the
            round is left out, and the decision is in the round's ``round.closed`` event
            (``dropped_opposing``). Off under central DP and secure aggregation; None
            disables it. Default 0.
        seed: seeds site sampling, per-site training seeds and the initial model. Default 0.
        plan: ``"auto"`` plans the spec's network, patch, spacing and normalisation and the
            batch size from the sites' dataset fingerprints when the experiment starts
            (``GET /experiments/{id}/plan``); None keeps ``spec`` and ``train`` as given.
            Default None.
        plan_options: budget and network knobs of the plan. Default None (``PlanOptions()``).
        privacy: client-level DP (and, later, secure aggregation); see ``docs/privacy.md``.
            With ``dp`` the update norm bound becomes ``dp.clip_norm`` (sites clip to it).
            Default None.
        class_names: one name per class of the network, background first; carried by every
            global-model and routing bundle (metadata ``class_names``) so that a site's
            ``fedseg site infer`` labels its picture and DICOM SEG with them. Not part of the
            spec (renaming a class changes no spec hash). Example:
            ``["background", "RV", "myocardium", "LV"]``. Default None (sites fall back to
            their manifest's labels, else ``class k``).
    """

    model_config = _Strict

    name: Annotated[str, Field(min_length=1, max_length=200)]
    spec: TaskSpec
    rounds: Annotated[int, Field(ge=1, le=100_000)]
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    min_sites: Annotated[int, Field(ge=1, le=10_000)] = 2
    sites: (
        Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=10_000)] | None
    ) = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    round_deadline_s: Annotated[float, Field(gt=0.0, le=30 * 86400.0)] = 3600.0
    max_round_retries: Annotated[int, Field(ge=0, le=100)] = 2
    update_norm_bound: Annotated[float, Field(gt=0.0, le=1e12)] | None = None
    robust_norm_multiple: Annotated[float, Field(ge=1.0, le=1e6)] | None = 3.0
    min_update_cosine: Annotated[float, Field(ge=-1.0, le=1.0)] | None = 0.0
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    plan: Literal["auto"] | None = None
    plan_options: PlanOptions | None = None
    privacy: PrivacyConfig | None = None
    class_names: Annotated[list[str], Field(max_length=256)] | None = None

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("sites must not repeat a site id")
        return value

    @model_validator(mode="after")
    def _class_names_fit(self) -> ExperimentCreate:
        if self.class_names is not None:
            from data_specs.class_names import check_class_names

            self.class_names = list(check_class_names(self.class_names, self.spec.out_channels))
        return self

    @model_validator(mode="after")
    def _privacy_fits(self) -> ExperimentCreate:
        from data_specs.researcher.privacy_rules import apply_privacy_rules

        apply_privacy_rules(self)
        return self

    @model_validator(mode="after")
    def _enough_sites(self) -> ExperimentCreate:
        if self.sites is not None and len(self.sites) < self.min_sites:
            raise ValueError(
                f"min_sites={self.min_sites} but only {len(self.sites)} site(s) listed in sites"
            )
        return self


class ExperimentPublic(BaseModel):
    """An experiment as its owner sees it."""

    id: str
    name: str
    status: str
    config: ExperimentCreate
    spec_hash: str
    participants: list[str] | None
    local_keys: list[str]
    initial_model_sha256: str | None
    current_round: int
    failure_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class GrantCreate(BaseModel):
    """``POST /experiments/{id}/grants`` body.

    Args:
        site_id: the (outside) site allowed to download the routing bundle.
    """

    model_config = _Strict

    site_id: Annotated[str, Field(min_length=1, max_length=64)]


class GrantPublic(BaseModel):
    """A routing-bundle grant."""

    experiment_id: str
    site_id: str
    site_name: str
    created_at: datetime
