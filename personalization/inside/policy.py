"""InsidePolicy: what an experiment's inside-personalisation method asks of a site, in one object.

A site's round under any method:

1. ``state = policy.start_state(global_, personal, local_keys=assignment.local_keys)``, load it
   into the model, take ``anchor = anchor_params(model)`` when ``policy.fedprox_mu > 0``;
2. train, adding ``proximal_term(model, anchor, policy.fedprox_mu)`` to each batch loss; for
   Ditto (``policy.trains_personal``) also train ``policy.personal_start(personal, global_)``
   with ``ditto_personal_step(..., lam=policy.ditto_lambda)`` for ``policy.ditto_epochs``;
3. upload the trained model; ``personal = policy.after_round(personal, trained, global_)``
   and store it when ``policy.keeps_personal``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from pydantic import ValidationError
from torch import nn

from data_specs.constants import PersonalizationMethod
from data_specs.errors import describe_validation_error
from data_specs.task_spec import TaskSpec
from data_specs.wire import PersonalizationConfig, TrainConfig
from personalization.errors import PersonalizationError
from personalization.inside.fedbn import apply_fedbn, fedbn_local_keys
from personalization.inside.iopfl import update_personal
from personalization.state_dict import StateDict, require_same_layout

_DEFAULT = PersonalizationConfig()
_DEFAULT_MU: float = TrainConfig.model_fields["fedprox_mu"].default


@dataclass(frozen=True)
class InsidePolicy:
    """The inside-personalisation policy of an experiment (plain data plus small pure steps).

    Defaults and bounds are those of ``data_specs.wire.PersonalizationConfig`` (and
    ``TrainConfig.fedprox_mu``): construction validates through them, so no rule is written twice.

    Args:
        method: ``none`` | ``iopfl`` | ``fedbn`` | ``fedprox`` | ``ditto``. Default as
            ``PersonalizationConfig`` (``iopfl``).
        alpha: IOP-FL weight of the old personal model. Default 0.1.
        fedprox_mu: proximal strength on the uploaded model's training; applied under any
            method (``fedprox`` names the baseline; with μ = 0 it is FedAvg). Default 0.
        ditto_lambda: Ditto's λ. Default 0.1.
        ditto_epochs: local epochs of the Ditto personal model per round. Default 1.

    Example:
        >>> policy = InsidePolicy.from_train_config(assignment.train)
        >>> policy.keeps_personal, policy.fedprox_mu
        (True, 0.0)
    """

    method: PersonalizationMethod = _DEFAULT.method
    alpha: float = _DEFAULT.alpha
    fedprox_mu: float = _DEFAULT_MU
    ditto_lambda: float = _DEFAULT.ditto_lambda
    ditto_epochs: int = _DEFAULT.ditto_epochs
    config: PersonalizationConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            config = PersonalizationConfig(
                method=self.method,
                alpha=self.alpha,
                ditto_lambda=self.ditto_lambda,
                ditto_epochs=self.ditto_epochs,
            )
            TrainConfig(fedprox_mu=self.fedprox_mu)
        except ValidationError as exc:
            raise PersonalizationError(describe_validation_error(exc, "personalization")) from exc
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "method", config.method)

    @classmethod
    def from_config(cls, config: PersonalizationConfig, *, fedprox_mu: float = 0.0) -> InsidePolicy:
        """Build from the experiment's ``PersonalizationConfig``.

        Args:
            config: the personalisation block of ``TrainConfig``.
            fedprox_mu: ``TrainConfig.fedprox_mu``. Default 0.

        Example:
            >>> InsidePolicy.from_config(PersonalizationConfig(method="fedbn")).method
            <PersonalizationMethod.FEDBN: 'fedbn'>
        """
        return cls(
            method=config.method,
            alpha=config.alpha,
            fedprox_mu=fedprox_mu,
            ditto_lambda=config.ditto_lambda,
            ditto_epochs=config.ditto_epochs,
        )

    @classmethod
    def from_train_config(cls, train: TrainConfig) -> InsidePolicy:
        """Build from a task's ``TrainConfig`` (its personalisation block and ``fedprox_mu``).

        Example:
            >>> InsidePolicy.from_train_config(TrainConfig(fedprox_mu=0.01)).fedprox_mu
            0.01
        """
        return cls.from_config(train.personalization, fedprox_mu=train.fedprox_mu)

    @property
    def keeps_personal(self) -> bool:
        """Whether the site keeps a personal model between rounds (IOP-FL, FedBN, Ditto)."""
        return self.config.keeps_personal

    @property
    def trains_personal(self) -> bool:
        """Whether the personal model has its own training loop each round (Ditto)."""
        return self.config.trains_personal

    def local_keys(self, spec_or_model: TaskSpec | nn.Module) -> list[str]:
        """Keys the aggregator must not average: the norm layers under FedBN, none otherwise.

        Args:
            spec_or_model: the experiment's task spec or a model. Example: ``assignment.spec``.
        """
        if self.config.norm_layers_local:
            return fedbn_local_keys(spec_or_model)
        return []

    def start_state(
        self,
        global_: Mapping[str, torch.Tensor],
        personal: Mapping[str, torch.Tensor] | None,
        *,
        local_keys: Iterable[str],
    ) -> StateDict:
        """The state the site's model trains from this round.

        FedBN: the global weights with the site's own norm layers from ``personal``; every other
        method: the global weights.

        Args:
            global_: the global model received.
            personal: the personal model stored after the site's last round, or None.
            local_keys: keys the aggregator did not average, normally
                ``assignment.local_keys`` (``self.local_keys(spec)`` if the task names none).

        Raises:
            PersonalizationError: FedBN with a personal model but no local keys.
        """
        if not self.config.norm_layers_local or personal is None:
            return dict(global_)
        keys = list(local_keys)
        if not keys:
            raise PersonalizationError("FedBN needs the norm layers' local_keys, got none")
        return apply_fedbn(global_, personal, keys)

    def personal_start(
        self, personal: Mapping[str, torch.Tensor] | None, global_: Mapping[str, torch.Tensor]
    ) -> StateDict | None:
        """The personal model Ditto trains this round: the stored one, or a copy of θ at first.

        Returns None for methods without a personal training loop.
        """
        if not self.trains_personal:
            return None
        source = global_ if personal is None else personal
        return {k: v.detach().clone() for k, v in source.items()}

    def after_round(
        self,
        personal: Mapping[str, torch.Tensor] | None,
        local_trained: Mapping[str, torch.Tensor],
        global_: Mapping[str, torch.Tensor],
    ) -> StateDict | None:
        """The personal model to keep after a round, or None when the method keeps none.

        - ``iopfl``: ``α·P + (1−α)·W`` (``update_personal``); P = W in the first round.
        - ``fedbn``: the trained model itself (its norm layers are the site's own).
        - ``ditto``: ``personal`` is v as trained this round; it is kept as is.
        - ``none`` / ``fedprox``: None.

        Args:
            personal: IOP-FL: P from the previous round or None; Ditto: v after this round's
                personal steps; otherwise ignored.
            local_trained: the model W trained (and uploaded) this round.
            global_: the global model θ the round started from.

        Raises:
            PersonalizationError: Ditto without a trained personal model.
            StateDictError: the models' layouts differ.

        Example:
            >>> personal = policy.after_round(personal, model.state_dict(), global_state)
        """
        method = self.method
        if method == PersonalizationMethod.IOPFL:
            return update_personal(personal, local_trained, self.alpha)
        if method == PersonalizationMethod.FEDBN:
            return {k: v.detach().clone() for k, v in local_trained.items()}
        if method == PersonalizationMethod.DITTO:
            if personal is None:
                raise PersonalizationError(
                    "Ditto keeps the personal model v trained this round; got none"
                )
            require_same_layout(global_, personal, what="Ditto global (θ) and personal (v) models")
            return {k: v.detach().clone() for k, v in personal.items()}
        return None
