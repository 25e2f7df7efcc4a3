"""MONAI ``ClientAlgo`` adapter wrapping the site trainer, so another FL runtime can drive it.

MONAI passes weights in an ``ExchangeObject`` (a dict subclass with attributes); this adapter
translates to and from the trainer's typed API (``train_round``, ``evaluate_state``) and keeps
the last round's result between ``train`` and ``get_weights``. As in MONAI's own design the algo
wraps a trainer (the trainer knows nothing of it), so the import runs one way only.
"""

from __future__ import annotations

from typing import Any

from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import ExtraItems, FlStatistics, WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from data_specs.constants import BundleKind
from data_specs.wire import TrainConfig
from site_agent.errors import TrainingError
from site_agent.training.trainer import SiteTrainer, TrainResult, cpu_state, to_torch_state

TRAIN_CONFIG_KEY = "fedseg_train_config"
"""``extra`` key carrying a ``TrainConfig`` (or its dict) for ``train``."""


class SiteClientAlgo(ClientAlgo):
    """``initialize → train → get_weights → evaluate → finalize`` with ``ExchangeObject`` weights.

    Args:
        trainer: the site trainer that does the work.
        default_config: the train config when ``train``'s ``extra`` carries none. Default
            ``TrainConfig()``.
        client_name: TensorBoard run name until ``initialize`` names the client. Default
            ``"monai-fl"``.

    ``extra`` dicts may carry ``fedseg_train_config`` (a ``TrainConfig`` or dict) for ``train``,
    and MONAI's ``ExtraItems.CLIENT_NAME`` for ``initialize``.

    Example:
        >>> algo = SiteClientAlgo(SiteTrainer(spec, train_data, val_data))
        >>> algo.train(ExchangeObject(weights=state, weight_type=WeightType.WEIGHTS))
    """

    def __init__(
        self,
        trainer: SiteTrainer,
        *,
        default_config: TrainConfig | None = None,
        client_name: str = "monai-fl",
    ) -> None:
        self.trainer = trainer
        self.default_config = default_config if default_config is not None else TrainConfig()
        self.client_name = client_name
        self._last: TrainResult | None = None
        self._last_global: dict[str, Any] | None = None

    def initialize(self, extra: dict | None = None) -> None:
        """Remember the FL runtime's client name and forget any earlier result.

        Args:
            extra: MONAI extra items. Default None. Example: ``{"fl_client_name": "site-1"}``.
        """
        extra = extra or {}
        self.client_name = str(extra.get(ExtraItems.CLIENT_NAME, self.client_name))
        self._last = None
        self._last_global = None

    def train(self, data: ExchangeObject, extra: dict | None = None) -> None:
        """Train one round from the full global weights in ``data``.

        Args:
            data: ``ExchangeObject(weights=state_dict, weight_type=WeightType.WEIGHTS)``.
            extra: may carry ``fedseg_train_config``. Default None (``default_config``).

        Raises:
            TrainingError: ``data`` holds no weights, or only a difference.
        """
        if not isinstance(data, ExchangeObject) or not data.is_valid_weights():
            raise TrainingError("train expects an ExchangeObject with weights and a weight_type")
        if data.weight_type != WeightType.WEIGHTS:
            raise TrainingError(
                f"train expects full weights ({WeightType.WEIGHTS}), got {data.weight_type}"
            )
        config = _train_config((extra or {}).get(TRAIN_CONFIG_KEY), self.default_config)
        self._last_global = dict(data.weights or {})
        self._last = self.trainer.train_round(self._last_global, config, tag=self.client_name)

    def get_weights(self, extra: dict | None = None) -> ExchangeObject:
        """The weights of the last ``train``: full, or the difference to the global model.

        Args:
            extra: ``{"weight_type": WeightType.WEIGHT_DIFF}`` asks for a difference; otherwise
                the last train config's ``update_kind`` decides. Default None.

        Returns:
            ``ExchangeObject`` with ``weights``, ``weight_type``, ``metrics`` (aggregates) and
            ``statistics`` (executed iterations, training samples). Before any ``train``, the
            current model weights, full.
        """
        if self._last is None:
            return ExchangeObject(
                weights=cpu_state(self.trainer.model), weight_type=WeightType.WEIGHTS
            )
        wanted = (extra or {}).get("weight_type")
        kind = self.default_config.update_kind
        diff = wanted == WeightType.WEIGHT_DIFF or (wanted is None and kind == BundleKind.DIFF)
        weights = self._last.state
        if diff:
            base = to_torch_state(self._last_global or {})
            weights = {k: v - base[k].to(v.dtype) for k, v in weights.items()}
        return ExchangeObject(
            weights=weights,
            weight_type=WeightType.WEIGHT_DIFF if diff else WeightType.WEIGHTS,
            metrics=self._last.metrics.model_dump(exclude_none=True),
            statistics={
                FlStatistics.NUM_EXECUTED_ITERATIONS: self._last.steps,
                FlStatistics.TOTAL_DATA: self._last.num_samples,
            },
        )

    def evaluate(self, data: ExchangeObject, extra: dict | None = None) -> ExchangeObject:
        """Dice per class, mean Dice and HD95 of the weights in ``data`` on the validation split.

        Args:
            data: ``ExchangeObject`` with full weights.
            extra: unused. Default None.

        Returns:
            ``ExchangeObject(metrics={"val_dice", "val_dice_per_class", "val_hd95",
            "num_val_cases"})``.
        """
        if not isinstance(data, ExchangeObject) or not data.is_valid_weights():
            raise TrainingError("evaluate expects an ExchangeObject with weights and a weight_type")
        result = self.trainer.evaluate_state(dict(data.weights or {}))
        return ExchangeObject(metrics=result.as_site_metrics().model_dump(exclude_none=True))

    def abort(self, extra: dict | None = None) -> None:
        """Stop a running ``train`` after its current step."""
        self.trainer.request_abort()

    def finalize(self, extra: dict | None = None) -> None:
        """Flush TensorBoard and drop the last result."""
        self.trainer.close()
        self._last = None
        self._last_global = None


def _train_config(value: Any, default: TrainConfig) -> TrainConfig:
    if value is None:
        return default
    if isinstance(value, TrainConfig):
        return value
    return TrainConfig.model_validate(value)
