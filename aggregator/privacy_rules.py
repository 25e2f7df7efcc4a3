"""What a privacy option demands of the rest of an experiment's configuration.

Kept out of the schema module so the rules read in one place: client-level DP needs a
mean-based strategy, plain float updates (a lossy codec would change the clipped norm) and an
update norm bound no larger than the clip norm, which the intake then enforces.
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
    if privacy.secure_aggregation is not None:
        raise ValueError(
            "secure_aggregation is not yet wired into the service's rounds: the protocol is in "
            "data_specs.privacy (tested, benchmarked) but the aggregator cannot run it yet"
        )
    dp = privacy.dp
    if dp is None:
        return
    if cfg.strategy.name not in MEAN_STRATEGIES:
        raise ValueError(
            f"privacy.dp needs a mean-based strategy {list(MEAN_STRATEGIES)}, "
            f"got {cfg.strategy.name!r}"
        )
    if cfg.train.codec.name != "none":
        raise ValueError(
            f"privacy.dp cannot combine with the update codec {cfg.train.codec.name!r}: a lossy "
            "codec changes the clipped update's norm"
        )
    bound = dp.clip_norm * (1 + NORM_SLACK)
    if cfg.update_norm_bound is None or cfg.update_norm_bound > bound:
        cfg.update_norm_bound = bound
