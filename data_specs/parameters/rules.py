"""Parameter models of server strategies and update codecs: pydantic checks, one-line messages.

Each strategy and each codec declares its parameters once, as a ``ParamRules`` model (types,
defaults and ranges as pydantic constraints). The same model validates an experiment's JSON
(and documents it in OpenAPI through the discriminated unions of ``data_specs.strategy_params``
and ``data_specs.parameters.codecs``), the aggregator's strategy registry and the codec metadata of
uploaded bundles. A refusal is one line naming the owner, the parameter, the rule and the
value: ``codec 'topk': 'fraction' must be a number in (0, 1], got 0``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails


class ParamValueError(ValueError):
    """A parameter set that breaks its model's rules; the message is the one-line reason."""


class ParamRules(BaseModel):
    """Base of every parameter model: unknown names refused, numbers strict and finite.

    Subclasses set ``owner`` (``"codec 'topk'"``, ``"strategy 'fedavg'"``) and declare their
    parameters as fields with defaults and ``Field`` bounds.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
    owner: ClassVar[str] = "params"

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ParamValueError(
                f"{cls.owner}: params must be a JSON object, got {type(data).__name__}"
            )
        try:
            return handler(dict(data))
        except ValidationError as exc:
            raise ParamValueError(describe_param_errors(cls, exc.errors())) from None

    @classmethod
    def resolve(cls, params: Any) -> dict[str, Any]:
        """Every parameter: the given ones checked, the rest at their defaults.

        Raises:
            ParamValueError: not a mapping, an unknown name, a wrong type or a value out of range.
        """
        try:
            return cls.model_validate(params).model_dump()
        except ValidationError as exc:
            raise ParamValueError(first_reason(exc)) from None


def first_reason(exc: ValidationError) -> str:
    """The one-line reason a ``ParamRules`` validator gave (or pydantic's own message)."""
    error = exc.errors()[0]
    reason = (error.get("ctx") or {}).get("error")
    return str(reason) if reason is not None else error["msg"]


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


def _interval(model: type[ParamRules], name: str) -> str:
    low, low_open, high, high_open = -math.inf, True, math.inf, True
    for rule in model.model_fields[name].metadata:
        if isinstance(rule, Gt):
            low, low_open = float(rule.gt), True  # type: ignore[arg-type]
        elif isinstance(rule, Ge):
            low, low_open = float(rule.ge), False  # type: ignore[arg-type]
        elif isinstance(rule, Lt):
            high, high_open = float(rule.lt), True  # type: ignore[arg-type]
        elif isinstance(rule, Le):
            high, high_open = float(rule.le), False  # type: ignore[arg-type]
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"{left}{_number(low)}, {_number(high)}{right}"


def _reason(model: type[ParamRules], error: ErrorDetails) -> str:
    name = str(error["loc"][0]) if error["loc"] else "params"
    got = f", got {error['input']!r}"
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "literal_error":
        return f"{name!r} must be {ctx['expected']}{got}"
    if kind == "bool_type":
        return f"{name!r} must be true or false{got}"
    if kind == "value_error":
        return f"{name!r} {ctx['error']}{got}"
    field = model.model_fields.get(name)
    what = "an integer" if field is not None and field.annotation is int else "a number"
    interval = _interval(model, name) if field is not None else ""
    return f"{name!r} must be {what} in {interval}{got}"


def describe_param_errors(model: type[ParamRules], errors: list[ErrorDetails]) -> str:
    """One line for pydantic's errors on ``model``: unknown names first, else the first error.

    Example: ``strategy 'fedavg' has no parameter(s) ['lr']; allowed: ['server_lr']``.
    """
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        allowed = sorted(model.model_fields) or "none"
        return f"{model.owner} has no parameter(s) {unknown}; allowed: {allowed}"
    return f"{model.owner}: {_reason(model, errors[0])}"
