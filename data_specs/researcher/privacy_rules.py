"""What a privacy option demands of the rest of an experiment's configuration.

Kept out of the schema module so the rules read in one place: client-level DP and secure
aggregation need a mean-based strategy and plain float updates (a lossy codec would change the
clipped norm; under secure aggregation the ring quantisation is the codec). DP also sets the
update norm bound to the clip norm, which the intake enforces (without secure aggregation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_specs.constants import NormKind

if TYPE_CHECKING:
    from data_specs.researcher.experiments import ExperimentCreate

MEAN_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi")
# Sites clip in float64 and send float32; the intake recomputes the norm from W − θ.
NORM_SLACK = 1e-4


def check_dp_sgd(cfg: ExperimentCreate) -> None:
    """Sample-level DP-SGD (``train.dp_sgd``) needs per-sample gradients of its own.

    Raises:
        ValueError: batch norm in the spec, deep supervision or FedProx beside ``dp_sgd``.
    """
    if cfg.train.dp_sgd is None:
        return
    if cfg.spec.norm == NormKind.BATCH:
        raise ValueError(
            "train.dp_sgd needs spec.norm='instance': batch norm normalises each case with "
            "its batch's statistics, so a case's gradient is not its own (Opacus refuses it)"
        )
    if cfg.train.deep_supervision:
        raise ValueError("train.dp_sgd cannot combine with train.deep_supervision")
    if cfg.train.fedprox_mu > 0:
        raise ValueError("train.dp_sgd cannot combine with train.fedprox_mu > 0")


def apply_privacy_rules(cfg: ExperimentCreate) -> None:
    """Check ``cfg.privacy`` against the rest and tighten ``update_norm_bound`` to ``C``.

    Raises:
        ValueError: a combination that cannot hold (pydantic reports it as a 422).
    """
    check_dp_sgd(cfg)
    privacy = cfg.privacy
    if privacy is None:
        return
    what = "privacy.secure_aggregation" if privacy.secure_aggregation else "privacy.dp"
    if privacy.secure_aggregation is None and privacy.dp is None:
        return
    if cfg.strategy.name not in MEAN_STRATEGIES:
        raise ValueError(
            f"{what} needs a mean-based strategy {list(MEAN_STRATEGIES)}, got {cfg.strategy.name!r}"
        )
    if cfg.train.codec.name != "none":
        raise ValueError(
            f"{what} cannot combine with the update codec {cfg.train.codec.name!r}: "
            + (
                "the ring quantisation is its own codec, and sums of codec payloads are not "
                "sums of updates"
                if privacy.secure_aggregation
                else "a lossy codec changes the clipped update's norm"
            )
        )
    dp = privacy.dp
    if dp is None:
        return
    bound = dp.clip_norm * (1 + NORM_SLACK)
    if cfg.update_norm_bound is None or cfg.update_norm_bound > bound:
        cfg.update_norm_bound = bound
