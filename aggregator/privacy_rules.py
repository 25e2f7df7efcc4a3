"""What a privacy option demands of the rest of an experiment's configuration.

Kept out of the schema module so the rules read in one place: client-level DP and secure
aggregation need a mean-based strategy and plain float updates (a lossy codec would change the
clipped norm; under secure aggregation the ring quantisation is the codec). DP also sets the
update norm bound to the clip norm, which the intake enforces (without secure aggregation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.schemas.experiments import ExperimentCreate

MEAN_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi")
# Sites clip in float64 and send float32; the intake recomputes the norm from W − θ.
NORM_SLACK = 1e-4


def apply_privacy_rules(cfg: ExperimentCreate) -> None:
    """Check ``cfg.privacy`` against the rest and tighten ``update_norm_bound`` to ``C``.

    Raises:
        ValueError: a combination that cannot hold (pydantic reports it as a 422).
    """
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
