"""Sample-level DP-SGD at a site (Opacus): the option in ``TrainConfig`` and what a site reports.

Client-level DP (``config.DPConfig``) protects a hospital's whole contribution; DP-SGD protects
each training case inside one hospital: every step clips each case's gradient to
``max_grad_norm`` and adds ``N(0, (z · max_grad_norm)²)`` to their sum (Abadi et al. 2016),
with batches drawn by Poisson sampling. The site's accountant (Opacus's RDP accountant) turns
``z``, the sampling rate and the steps into (ε, δ) for that site's data.

Pure pydantic: no torch, so the aggregator can read the figures a site reports.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_Strict = ConfigDict(extra="forbid")


class DPSGDConfig(BaseModel):
    """Per-sample clipping and noise in each site's local training (``TrainConfig.dp_sgd``).

    Needs a model without batch norm (``TaskSpec.norm = "instance"``): batch norm mixes the
    cases of a batch, so one case's gradient is not its own. Not combinable with deep
    supervision or FedProx (their terms would bypass the per-sample clipping).

    Args:
        noise_multiplier: ``z``; the noise std on each step's sum of clipped per-sample
            gradients is ``z · max_grad_norm``. Example: ``1.1``.
        max_grad_norm: L2 bound of each case's gradient. Default 1.0.
        delta: δ of the reported (ε, δ). Default 1e-5.
        epsilon_budget: the largest total ε a site may spend. A site does not train a round
            that would take its total over it, and the aggregator ends the experiment after a
            round in which a site reported that one more such round would (the
            ``privacy.budget_spent`` event). Default None (ε is only reported).
    """

    model_config = _Strict

    noise_multiplier: Annotated[float, Field(gt=0.0, le=1e4)] = 1.0
    max_grad_norm: Annotated[float, Field(gt=0.0, le=1e6)] = 1.0
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    epsilon_budget: Annotated[float, Field(gt=0.0)] | None = None


class SampleDPSpent(BaseModel):
    """What a site's accountant says after a round of DP-SGD (``SiteMetrics.dp_sgd``).

    Args:
        epsilon_round: ε of this round's steps alone, at ``delta``.
        epsilon_total: ε of rounds 1..this round together: an upper bound that counts this
            round's steps in every round up to it, whether the site was sampled or not.
        delta: δ.
        noise_multiplier: ``z``.
        max_grad_norm: per-sample clip norm.
        sample_rate: Poisson sampling rate of a case per step (1 / batches per epoch).
        steps: optimiser steps this round.
        epsilon_next: the total ε after one more round of as many steps (what the aggregator
            compares with ``DPSGDConfig.epsilon_budget``). Default None (not reported).
    """

    model_config = _Strict

    epsilon_round: Annotated[float, Field(ge=0.0)]
    epsilon_total: Annotated[float, Field(ge=0.0)]
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    noise_multiplier: Annotated[float, Field(gt=0.0)]
    max_grad_norm: Annotated[float, Field(gt=0.0)]
    sample_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    steps: Annotated[int, Field(ge=0)]
    epsilon_next: Annotated[float, Field(ge=0.0)] | None = None
