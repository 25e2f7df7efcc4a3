"""Server strategy names and their parameters: one pydantic model each, below both services.

``StrategyConfig`` (the experiment's ``strategy``) is a discriminated union on ``name``, so the
OpenAPI document lists every strategy with its parameters, defaults and ranges. The JSON is the
same as before: ``{"name": "fedadam", "params": {"server_lr": 0.03}}`` (a missing ``name`` is
``fedavg``); ``.name`` and ``.params`` (a plain dict, defaults filled in) read it.
``aggregator.strategies.build_strategy`` resolves the same models through
``resolve_strategy_params``; so the rules are written once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from data_specs.errors import DataSpecError
from data_specs.parameters.rules import ParamRules, ParamValueError

_Strict = ConfigDict(extra="forbid")
_ServerLr = Annotated[float, Field(gt=0, description="server learning rate (step on θ)")]
_Beta = Annotated[float, Field(ge=0, lt=1)]


class StrategyName(StrEnum):
    """The strategy names (``StrategyConfig``'s tags); the CLI's ``--strategy`` choices."""

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"


class StrategyParamsError(DataSpecError, ValueError):
    """An unknown strategy name, an unknown parameter, or a value out of its range."""


class FedAvgParams(ParamRules):
    """FedAvg: ``θ ← θ + server_lr · mean(Δ)``."""

    owner: ClassVar[str] = "strategy 'fedavg'"
    server_lr: _ServerLr = 1.0


class FedAvgMParams(ParamRules):
    """FedAvg with server momentum."""

    owner: ClassVar[str] = "strategy 'fedavgm'"
    server_lr: _ServerLr = 1.0
    momentum: _Beta = 0.9


class FedAdamParams(ParamRules):
    """FedAdam (Reddi et al. 2021)."""

    owner: ClassVar[str] = "strategy 'fedadam'"
    server_lr: _ServerLr = 0.01
    beta1: _Beta = 0.9
    beta2: _Beta = 0.99
    tau: Annotated[float, Field(gt=0, description="adaptivity (ε)")] = 1e-3


class FedYogiParams(FedAdamParams):
    """FedYogi (Reddi et al. 2021): FedAdam's parameters."""

    owner: ClassVar[str] = "strategy 'fedyogi'"


class MedianParams(ParamRules):
    """Coordinate-wise median: no parameters."""

    owner: ClassVar[str] = "strategy 'median'"


class TrimmedMeanParams(ParamRules):
    """Coordinate-wise trimmed mean."""

    owner: ClassVar[str] = "strategy 'trimmed_mean'"
    trim_fraction: Annotated[float, Field(ge=0, lt=0.5, description="cut from each end")] = 0.1


class FedAvgStrategy(BaseModel):
    model_config = _Strict
    name: Literal["fedavg"] = "fedavg"
    params: FedAvgParams = Field(default_factory=FedAvgParams)


class FedAvgMStrategy(BaseModel):
    model_config = _Strict
    name: Literal["fedavgm"]
    params: FedAvgMParams = Field(default_factory=FedAvgMParams)


class FedAdamStrategy(BaseModel):
    model_config = _Strict
    name: Literal["fedadam"]
    params: FedAdamParams = Field(default_factory=FedAdamParams)


class FedYogiStrategy(BaseModel):
    model_config = _Strict
    name: Literal["fedyogi"]
    params: FedYogiParams = Field(default_factory=FedYogiParams)


class MedianStrategy(BaseModel):
    model_config = _Strict
    name: Literal["median"]
    params: MedianParams = Field(default_factory=MedianParams)


class TrimmedMeanStrategy(BaseModel):
    model_config = _Strict
    name: Literal["trimmed_mean"]
    params: TrimmedMeanParams = Field(default_factory=TrimmedMeanParams)


AnyStrategy = Annotated[
    FedAvgStrategy
    | FedAvgMStrategy
    | FedAdamStrategy
    | FedYogiStrategy
    | MedianStrategy
    | TrimmedMeanStrategy,
    Field(discriminator="name"),
]

PARAMS: dict[str, type[ParamRules]] = {
    "fedavg": FedAvgParams,
    "fedavgm": FedAvgMParams,
    "fedadam": FedAdamParams,
    "fedyogi": FedYogiParams,
    "median": MedianParams,
    "trimmed_mean": TrimmedMeanParams,
}
"""Every strategy name with its parameter model."""

DEFAULTS: dict[str, dict[str, float]] = {n: m().model_dump() for n, m in PARAMS.items()}
"""Every strategy name with its parameters and their defaults."""


class StrategyConfig(RootModel[AnyStrategy]):
    """Server aggregation rule and its parameters.

    JSON: ``{"name": "fedavg" | "fedavgm" | "fedadam" | "fedyogi" | "median" | "trimmed_mean",
    "params": {...}}``; missing parameters take their defaults, a missing name is ``fedavg``.
    Example: ``StrategyConfig(name="fedadam", params={"server_lr": 0.03})``.
    """

    root: AnyStrategy = Field(default_factory=FedAvgStrategy)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data:
            return {**data, "name": "fedavg"}
        return data

    @property
    def name(self) -> str:
        """The strategy's registry name. Example: ``"fedadam"``."""
        return self.root.name

    @property
    def params(self) -> dict[str, float]:
        """Every parameter, defaults filled in. Example: ``{"server_lr": 1.0}``."""
        return self.root.params.model_dump()


def resolve_strategy_params(name: str, params: Any = None) -> dict[str, float]:
    """Every parameter of strategy ``name``: the given ones checked, the rest at their defaults.

    Args:
        name: a key of ``PARAMS``. Example: ``"fedadam"``.
        params: the experiment's parameters. Default None (all defaults).
            Example: ``{"server_lr": 0.03}``.

    Raises:
        StrategyParamsError: unknown name, unknown parameter, non-numeric or out-of-range value.
    """
    model = PARAMS.get(name)
    if model is None:
        raise StrategyParamsError(
            f"unknown aggregation strategy {name!r}; expected one of {sorted(PARAMS)}"
        )
    try:
        return model.resolve({} if params is None else params)
    except ParamValueError as exc:
        raise StrategyParamsError(str(exc)) from None
