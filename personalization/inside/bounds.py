"""Range checks of the inside methods' parameters, read from the experiment config's own bounds.

The bounds of α, λ and μ are written once, as pydantic constraints on
``data_specs.wire.PersonalizationConfig`` (and ``TrainConfig.fedprox_mu``); the pure functions
here (``update_personal``, ``ditto_penalty``, ``proximal_term``) check their arguments against
those same constraints instead of a second copy of the numbers.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from data_specs.wire import PersonalizationConfig, TrainConfig
from personalization.errors import PersonalizationError

_OWNER: dict[str, type[BaseModel]] = {
    "alpha": PersonalizationConfig,
    "ditto_lambda": PersonalizationConfig,
    "ditto_epochs": PersonalizationConfig,
    "fedprox_mu": TrainConfig,
}


def check_bound(field: str, value: float, *, what: str) -> None:
    """Refuse ``value`` unless the config field ``field`` would accept it.

    Args:
        field: ``alpha``, ``ditto_lambda``, ``ditto_epochs`` or ``fedprox_mu``.
        value: the argument a method was given. Example: ``0.1``.
        what: how the message names it. Example: ``"IOP-FL alpha"``.

    Raises:
        PersonalizationError: naming ``what``, the rule and the value.
    """
    try:
        _OWNER[field].model_validate({field: value})
    except ValidationError as exc:
        rule = exc.errors(include_url=False)[0]["msg"]
        raise PersonalizationError(f"{what}: {rule}, got {value}") from None
