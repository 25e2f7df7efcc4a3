"""Client-level DP-FedAvg maths: clip an update, Gaussian noise, adaptive clipping.

DP-FedAvg (McMahan et al. 2018): each site clips its whole update ``Δ_i = W_i − θ`` to L2 norm
``C``; the server sums the clipped updates, adds ``N(0, (z·C)²)`` per coordinate (``z`` the
noise multiplier) and divides by the number of sites sampled (a fixed denominator, so one site
changes the average by at most ``C / m``). With secure aggregation the server never sees a
single update, so the noise is split over the sites instead (distributed DP): each of the
``m`` sampled sites adds ``N(0, (z·C)² / m)``, which sums to the same ``N(0, (z·C)²)`` as long
as every sampled site contributes (a dropped site's share of the noise is missing; see
:func:`site_noise_std`).

Adaptive clipping (Andrew et al. 2021): each site also reports whether its update norm was at
most ``C``; the server adds ``N(0, σ_b²)`` to the count of those bits, and moves ``C``
geometrically towards the target quantile ``γ``:
``C ← C · exp(−η · (b̄ − γ))``. The noise on the bits spends a little of the budget; the
update noise multiplier that keeps the total at ``z`` is ``(z^−2 − (2σ_b)^−2)^−1/2``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from data_specs.errors import PrivacyError


@dataclass(frozen=True)
class ClipResult:
    """A clipped update and what clipping did.

    Args:
        tensors: the clipped update, same keys and dtypes.
        norm: the L2 norm before clipping.
        factor: the factor applied, ``min(1, C / norm)``.
    """

    tensors: dict[str, np.ndarray]
    norm: float
    factor: float

    @property
    def unclipped(self) -> bool:
        """Adaptive clipping's bit: the update was within the bound."""
        return self.factor >= 1.0


def l2_norm(tensors: Mapping[str, np.ndarray], skip: frozenset[str] = frozenset()) -> float:
    """The L2 norm of all float tensors together (keys in ``skip`` left out), in float64."""
    total = 0.0
    for key, value in tensors.items():
        if key in skip or value.dtype.kind != "f":
            continue
        flat = value.astype(np.float64, copy=False).reshape(-1)
        total += float(flat @ flat)
    return math.sqrt(total)


def clip_update(
    tensors: Mapping[str, np.ndarray], clip_norm: float, skip: frozenset[str] = frozenset()
) -> ClipResult:
    """Scale the float tensors of an update so that their joint L2 norm is at most ``clip_norm``.

    Args:
        tensors: the update ``W − θ`` by key. Example: ``{"w": np.ones(4, np.float32)}``.
        clip_norm: ``C`` (> 0). Example: ``0.5``.
        skip: keys that are not averaged (FedBN), left as they are and outside the norm.

    Raises:
        PrivacyError: ``C`` not positive, or a non-finite value.
    """
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise PrivacyError(f"the clip norm must be a positive number, got {clip_norm!r}")
    norm = l2_norm(tensors, skip)
    if not math.isfinite(norm):
        raise PrivacyError("the update holds NaN or Inf; it cannot be clipped")
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    out = {}
    for key, value in tensors.items():
        if factor < 1.0 and key not in skip and value.dtype.kind == "f":
            out[key] = (value.astype(np.float64) * factor).astype(value.dtype)
        else:
            out[key] = value
    return ClipResult(out, norm, factor)


def gaussian_noise(
    shapes: Mapping[str, tuple[int, ...]], std: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Independent ``N(0, std²)`` float32 noise for each shape (``std = 0`` gives zeros)."""
    if std < 0 or not math.isfinite(std):
        raise PrivacyError(f"noise std must be a finite number >= 0, got {std!r}")
    return {k: (rng.standard_normal(s) * std).astype(np.float32) for k, s in shapes.items()}


def central_noise_std(noise_multiplier: float, clip_norm: float, sampled: int) -> float:
    """Per-coordinate std of the noise on the *average*: ``z · C / m``."""
    if sampled < 1:
        raise PrivacyError(f"sampled sites must be >= 1, got {sampled}")
    return noise_multiplier * clip_norm / sampled


def site_noise_std(noise_multiplier: float, clip_norm: float, sampled: int) -> float:
    """Per-coordinate std each site adds to its *clipped update* for distributed DP: ``z·C/√m``.

    The ``m`` sites' noise sums to ``N(0, (z·C)²)``; if only ``k < m`` contribute, the sum holds
    ``k/m`` of that variance and the round's guarantee is that of ``z·√(k/m)``.
    """
    if sampled < 1:
        raise PrivacyError(f"sampled sites must be >= 1, got {sampled}")
    return noise_multiplier * clip_norm / math.sqrt(sampled)


def effective_noise_multiplier(noise_multiplier: float, bit_noise_std: float) -> float:
    """The update noise multiplier that leaves ``noise_multiplier`` overall once the clipping
    bits (noise ``bit_noise_std``) are also released (Andrew et al. 2021, Thm. 1).

    Raises:
        PrivacyError: ``bit_noise_std`` too small for the total (``2σ_b ≤ z``).
    """
    if bit_noise_std <= 0:
        return noise_multiplier
    rest = noise_multiplier**-2 - (2 * bit_noise_std) ** -2
    if rest <= 0:
        raise PrivacyError(
            f"bit noise {bit_noise_std} leaves no budget for the update at z={noise_multiplier}; "
            "raise the bit noise above z/2"
        )
    return rest**-0.5


def split_noise(noise_multiplier: float, bit_share: float) -> tuple[float, float]:
    """``(z_Δ, σ_b)`` for adaptive clipping that spends ``bit_share`` of a round on the bits.

    ``σ_b = z / (2√s)`` and ``z_Δ = z / √(1 − s)``, so ``z⁻² = z_Δ⁻² + (2σ_b)⁻²``: releasing the
    noisy update sum and the noisy bit count together is as private as one Gaussian mechanism
    of multiplier ``z`` (Andrew et al. 2021, Thm. 1), which is what the accountant composes.

    Example: ``split_noise(1.0, 0.1)`` is about ``(1.054, 1.581)``.

    Raises:
        PrivacyError: ``bit_share`` not in (0, 1) or ``z`` not positive.
    """
    if not 0 < bit_share < 1:
        raise PrivacyError(f"the bits' share of the privacy must be in (0, 1), got {bit_share!r}")
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise PrivacyError(f"noise multiplier must be > 0, got {noise_multiplier!r}")
    return noise_multiplier / math.sqrt(1 - bit_share), noise_multiplier / (
        2 * math.sqrt(bit_share)
    )


@dataclass(frozen=True)
class AdaptiveClip:
    """Geometric quantile tracking of the clip norm (Andrew et al. 2021).

    Args:
        target_quantile: ``γ``, the share of updates that should be unclipped. Example ``0.5``.
        learning_rate: ``η``. Default 0.2 (the paper's choice).
        bit_noise_std: ``σ_b`` on the count of unclipped bits. Example: ``m / 20``.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    bit_noise_std: float = 0.0

    def noisy_share(self, unclipped: int, sampled: int, rng: np.random.Generator) -> float:
        """``b̄ = (Σ b_i + N(0, σ_b²)) / m`` over the ``m`` sampled sites (fixed denominator)."""
        if sampled < 1:
            raise PrivacyError(f"sampled sites must be >= 1, got {sampled}")
        noisy = unclipped + (rng.normal(0.0, self.bit_noise_std) if self.bit_noise_std else 0.0)
        return noisy / sampled

    def step(self, clip_norm: float, share: float) -> float:
        """``C · exp(−η (b̄ − γ))``."""
        return clip_norm * math.exp(-self.learning_rate * (share - self.target_quantile))

    def next_clip(
        self, clip_norm: float, unclipped: int, sampled: int, rng: np.random.Generator
    ) -> float:
        """``C · exp(−η (b̄ − γ))`` with ``b̄`` the noisy share of unclipped updates."""
        return self.step(clip_norm, self.noisy_share(unclipped, sampled, rng))
