"""An experiment's privacy options (pydantic): client-level DP and secure aggregation."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_Strict = ConfigDict(extra="forbid")


class DPMode(StrEnum):
    """Where the Gaussian noise is added."""

    CENTRAL = "central"  # by the aggregator, which is trusted to see clipped updates
    DISTRIBUTED = "distributed"  # by every site, hidden in the sum by secure aggregation


class AdaptiveClipConfig(BaseModel):
    """Adaptive clipping (Andrew et al. 2021): ``C`` follows a quantile of the update norms.

    Each site reports one bit, whether its update norm was at most the round's ``C``; the
    aggregator adds Gaussian noise to their count and moves ``C ← C·exp(−η (b̄ − γ))``. The
    bits spend a share of the privacy: with ``z`` the configured noise multiplier (the one the
    accountant uses), the bit count gets noise ``σ_b = z / (2√s)`` and the update noise
    multiplier rises to ``z / √(1 − s)``, so that ``z⁻² = z_Δ⁻² + (2σ_b)⁻²`` (their Thm. 1).

    Args:
        target_quantile: ``γ``, the share of updates that should be unclipped. Default 0.5.
        learning_rate: ``η``. Default 0.2 (the paper's choice).
        bit_share: ``s``, the share of the round's privacy given to the bits. Default 0.1.
    """

    model_config = _Strict

    target_quantile: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    bit_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1


class DPConfig(BaseModel):
    """Client-level DP-FedAvg (McMahan et al. 2018).

    Args:
        mode: ``central`` or ``distributed``. Default ``central``.
        clip_norm: ``C``, the L2 bound each site clips its update ``W − θ`` to. Default 1.0.
        noise_multiplier: ``z``; the noise std on the sum of updates is ``z · C``. Default 1.0.
        delta: δ of the reported (ε, δ). Default 1e-5.
        epsilon_budget: the experiment completes before a round would take the total ε past
            it; None runs every round and only reports ε. Example: ``8.0``.
        adaptive: adaptive clipping; ``clip_norm`` is then the first round's ``C``. Central
            mode only. Default None (``C`` fixed).
    """

    model_config = _Strict

    mode: DPMode = DPMode.CENTRAL
    clip_norm: Annotated[float, Field(gt=0.0, le=1e6)] = 1.0
    noise_multiplier: Annotated[float, Field(gt=0.0, le=1e4)] = 1.0
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    epsilon_budget: Annotated[float, Field(gt=0.0)] | None = None
    adaptive: AdaptiveClipConfig | None = None


class SecAggConfig(BaseModel):
    """Secure aggregation (SecAgg+ style pairwise masks over a finite ring).

    Args:
        threshold: shares needed to unmask; None takes a majority of the sampled sites.
        neighbours: SecAgg+ neighbourhood per site; None masks with every other site.
        ring_bits: 32 or 64. Default 32 (the same bytes as float32).
        value_bound: per-coordinate clip of the update before quantisation. Default 1.0.
        max_total_samples: largest ``Σ n_i`` of a round. Default 1,000,000.
        unmask_wait_s: once uploads close, how long the aggregator waits for every site's
            unmask answer before unmasking with the ``threshold`` it has. Default 60.
    """

    model_config = _Strict

    threshold: Annotated[int, Field(ge=2)] | None = None
    neighbours: Annotated[int, Field(ge=2)] | None = None
    ring_bits: Literal[32, 64] = 32
    value_bound: Annotated[float, Field(gt=0.0)] = 1.0
    max_total_samples: Annotated[int, Field(ge=1)] = 1_000_000
    unmask_wait_s: Annotated[float, Field(ge=0.0, le=86400.0)] = 60.0


class PrivacyConfig(BaseModel):
    """What an experiment adds beyond "only weights leave"."""

    model_config = _Strict

    dp: DPConfig | None = None
    secure_aggregation: SecAggConfig | None = None

    @model_validator(mode="after")
    def _distributed_needs_secagg(self) -> PrivacyConfig:
        distributed = self.dp is not None and self.dp.mode == DPMode.DISTRIBUTED
        if distributed and self.secure_aggregation is None:
            raise ValueError("dp.mode=distributed needs secure_aggregation")
        if distributed and self.dp is not None and self.dp.adaptive is not None:
            raise ValueError(
                "dp.adaptive is implemented for dp.mode=central only (the clipping bits "
                "would have to travel inside the secure sum)"
            )
        return self
