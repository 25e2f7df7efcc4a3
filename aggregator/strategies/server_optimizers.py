"""Server optimisers applied to the combined pseudo-gradient ``Δ̄`` (Reddi et al. 2021, FedOpt).

``Δ̄ = Σ w_i (W_i − θ)`` points from the global model towards the sites' models, so every
optimiser *adds* its step: plain SGD gives ``θ' = θ + η Δ̄`` (FedAvg for ``η = 1``).
Optimiser memory lives in the server state under ``m.<key>`` and ``v.<key>``, as arrays of the
accumulator dtype (float32 for a float32 model), so the orchestrator can persist it like weights.

Initial values follow Reddi et al., Algorithm 2: ``m_{-1} = 0`` and ``v_{-1} = τ²``. As in the
paper there is no Adam bias correction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from aggregator.strategies.contract import StrategyError


def _state_or(
    state: Mapping[str, np.ndarray], name: str, like: np.ndarray, fill: float
) -> np.ndarray:
    """A fresh copy of ``state[name]`` in ``like``'s dtype, or ``fill`` if absent."""
    prev = state.get(name)
    if prev is None:
        return np.full_like(like, fill)
    prev = np.asarray(prev)
    if prev.shape != like.shape:
        raise StrategyError(
            f"server state {name!r} has shape {prev.shape}, expected {like.shape}: "
            "the state belongs to a different model"
        )
    return prev.astype(like.dtype, copy=True)


def _apply(theta: np.ndarray, step: np.ndarray, lr: float) -> np.ndarray:
    """``θ + η·step``, in place on ``step``; cast back to ``θ``'s dtype."""
    if lr != 1.0:
        np.multiply(step, step.dtype.type(lr), out=step)
    np.add(step, theta, out=step, casting="same_kind")
    return step.astype(theta.dtype, copy=False)


class ServerOptimizer(Protocol):
    """One server step for one key; writes its new memory into ``new_state``."""

    def step(
        self,
        key: str,
        theta: np.ndarray,
        delta: np.ndarray,
        state: Mapping[str, np.ndarray],
        new_state: dict[str, np.ndarray],
    ) -> np.ndarray:
        """The new global tensor. ``delta`` is scratch the optimiser may overwrite."""
        ...


class ServerSGD:
    """``θ' = θ + η Δ̄``; stateless.

    Args:
        server_lr: ``η`` > 0. Default 1.0 (plain FedAvg). Example: ``0.5``.
    """

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(
        self,
        key: str,
        theta: np.ndarray,
        delta: np.ndarray,
        state: Mapping[str, np.ndarray],
        new_state: dict[str, np.ndarray],
    ) -> np.ndarray:
        return _apply(theta, delta, self.server_lr)


class ServerMomentum:
    """FedAvgM (Hsu et al. 2019): ``m = β m + Δ̄``, ``θ' = θ + η m``.

    Args:
        server_lr: ``η`` > 0. Default 1.0. Example: ``1.0``.
        momentum: ``β`` in ``[0, 1)``. Default 0.9. Example: ``0.7``.
    """

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = server_lr
        self.momentum = momentum

    def step(
        self,
        key: str,
        theta: np.ndarray,
        delta: np.ndarray,
        state: Mapping[str, np.ndarray],
        new_state: dict[str, np.ndarray],
    ) -> np.ndarray:
        m = _state_or(state, f"m.{key}", delta, 0.0)
        m *= m.dtype.type(self.momentum)
        m += delta
        new_state[f"m.{key}"] = m
        np.copyto(delta, m)
        return _apply(theta, delta, self.server_lr)


class ServerAdaptive:
    """FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2).

    ``m = β1 m + (1 − β1) Δ̄``; Adam: ``v = β2 v + (1 − β2) Δ̄²``; Yogi:
    ``v = v − (1 − β2) Δ̄² sign(v − Δ̄²)``; then ``θ' = θ + η m / (√v + τ)``.

    Args:
        yogi: Yogi's additive second moment instead of Adam's. Example: ``True``.
        server_lr: ``η`` > 0. Default 0.01. Example: ``0.03``.
        beta1: ``β1`` in ``[0, 1)``. Default 0.9.
        beta2: ``β2`` in ``[0, 1)``. Default 0.99.
        tau: ``τ`` > 0, adaptivity floor; ``v`` starts at ``τ²``. Default 1e-3.
    """

    def __init__(
        self,
        *,
        yogi: bool,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.yogi = yogi
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def step(
        self,
        key: str,
        theta: np.ndarray,
        delta: np.ndarray,
        state: Mapping[str, np.ndarray],
        new_state: dict[str, np.ndarray],
    ) -> np.ndarray:
        f = delta.dtype.type
        m = _state_or(state, f"m.{key}", delta, 0.0)
        v = _state_or(state, f"v.{key}", delta, self.tau**2)
        m *= f(self.beta1)
        m += f(1.0 - self.beta1) * delta
        sq = np.square(delta)
        if self.yogi:
            sq *= np.sign(v - sq)
            v -= f(1.0 - self.beta2) * sq
        else:
            v *= f(self.beta2)
            v += f(1.0 - self.beta2) * sq
        new_state[f"m.{key}"] = m
        new_state[f"v.{key}"] = v
        np.sqrt(v, out=delta)
        delta += f(self.tau)
        np.divide(m, delta, out=delta)
        return _apply(theta, delta, self.server_lr)
