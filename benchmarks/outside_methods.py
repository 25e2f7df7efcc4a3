"""Every outside-site method of the outside benchmarks, scored on one held-out site.

Shared by the ACDC leave-one-hospital-out case and the synthetic cases of ``outside_bench``.
Given the routing bundle a held-out site downloaded, its unlabelled scans (what adaptation
reads) and its labelled test set (what Dice is computed on afterwards), ``score_methods``
measures:

- ``global``: the global model as trained (expert 0, the federation's batch-norm statistics);
- ``best expert``: the best single model of the bundle picked label-free (the safeguard's
  score, with its batch-norm statistics choice);
- ``output average``: the softmax mean of every expert;
- ``TENT``: entropy minimisation of the global model's norm layers (batch statistics);
- ``routed softmax`` / ``routed sigmoid``: the adapted routed model of each gate;
- ``safeguard``: what ``fedseg site adapt`` hands the site (softmax gate): the routed model or
  its label-free fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

METHODS = (
    "global",
    "best expert",
    "output average",
    "TENT",
    "routed softmax",
    "routed sigmoid",
    "safeguard",
)


@dataclass
class MethodScores:
    """What one held-out site measured."""

    held_out: str
    dice: dict[str, float | None]
    choice: str
    choice_bn: str
    routed_accepted: bool
    message: str
    best_expert: str
    adapt_seconds: dict[str, float]
    scans: int
    steps: dict[str, int]
    experts: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def score_methods(
    held_out: str,
    spec: Any,
    experts: Sequence[Any],
    names: Sequence[str],
    scans: Sequence[Any],
    dice: Callable[[Any], float | None],
    *,
    steps: int,
    lr: float,
    seed: int,
    class_prior: Sequence[float] | None = None,
    softmax_result: Any = None,
) -> MethodScores:
    """Run and score every method (see the module docstring).

    Args:
        held_out: the held-out site's name.
        spec: the task spec.
        experts: the bundle's state dicts (torch), expert 0 global.
        names: the bundle's expert names.
        scans: the held-out site's unlabelled scans (``{"image": (1, C, ...)}`` items).
        dice: mean foreground Dice of a model on the held-out site's labelled test set.
        steps: adaptation steps (TENT and routed alike).
        lr: adaptation learning rate of the routed model.
        seed: seed of the adaptations.
        class_prior: the federation's class frequencies, if the bundle carries them.
        softmax_result: an already computed softmax ``safe_adapt`` result (``fedseg site
            adapt``'s own run); default None runs it here.
    """
    from personalization.outside import AdaptConfig, OutputAverage, global_model, tent_adapt
    from personalization.outside.safeguard import SafeAdaptConfig, safe_adapt

    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for gate in ("softmax", "sigmoid"):
        if gate == "softmax" and softmax_result is not None:
            results[gate] = softmax_result
            seconds[gate] = softmax_result.record.seconds
            continue
        cfg = SafeAdaptConfig(adapt=AdaptConfig(steps=steps, lr=lr, seed=seed), gate=gate)
        t = time.perf_counter()
        results[gate] = safe_adapt(spec, experts, names, scans, cfg, class_prior=class_prior)
        seconds[gate] = time.perf_counter() - t
    tent = global_model(spec, experts[0])
    t = time.perf_counter()
    tent_adapt(tent, scans, AdaptConfig(steps=steps, lr=1e-3, seed=seed))
    seconds["TENT"] = time.perf_counter() - t
    soft = results["softmax"]
    site_experts = [c for c in soft.record.candidates if c.name.startswith("expert:")]
    best = max(site_experts or soft.record.candidates[:1], key=lambda c: c.score.score)
    models = {
        "global": global_model(spec, experts[0]),
        "best expert": soft.experts[best.name],
        "output average": OutputAverage(spec, experts),
        "TENT": tent,
        "routed softmax": soft.routed,
        "routed sigmoid": results["sigmoid"].routed,
        "safeguard": soft.chosen,
    }
    scores = {m: dice(model) for m, model in models.items()}
    return MethodScores(
        held_out=held_out,
        dice=scores,
        choice=soft.record.choice,
        choice_bn=soft.record.bn,
        routed_accepted=soft.record.routed_accepted,
        message=soft.record.message,
        best_expert=best.name,
        adapt_seconds={k: round(v, 2) for k, v in seconds.items()},
        scans=soft.record.scans,
        steps={g: r.record.steps for g, r in results.items()},
        experts=list(names),
        extra={
            "sigmoid_choice": results["sigmoid"].record.choice,
            "candidates": [c.model_dump() for c in soft.record.candidates],
        },
    )


def delta(scores: MethodScores, method: str, base: str = "global") -> float | None:
    """``method - base`` Dice in points (×100), None when either is missing."""
    a, b = scores.dice.get(method), scores.dice.get(base)
    return None if a is None or b is None else round(100 * (a - b), 1)


def result_rows(folds: Sequence[MethodScores]) -> tuple[list[list[object]], list[list[object]]]:
    """The Dice table (one row per held-out site plus the mean) and the safeguard table."""
    from benchmarks.acdc_common import mean_or_none

    dice_rows: list[list[object]] = [[f.held_out, *(f.dice[m] for m in METHODS)] for f in folds]
    dice_rows.append(["mean", *(mean_or_none(f.dice[m] for f in folds) for m in METHODS)])
    guard_rows: list[list[object]] = []
    for f in folds:
        guard_rows.append(
            [
                f.held_out,
                f"{f.choice} ({f.choice_bn} BN)",
                "yes" if f.routed_accepted else "no",
                _signed(delta(f, "routed softmax")),
                _signed(delta(f, "routed sigmoid")),
                _signed(delta(f, "safeguard")),
                f"{f.adapt_seconds.get('softmax', 0):.1f} s / {f.scans} scans",
            ]
        )
    return dice_rows, guard_rows


GUARD_HEADER = [
    "held-out site",
    "safeguard's choice",
    "routed accepted",
    "routed softmax − global (points)",
    "routed sigmoid − global",
    "safeguard − global",
    "adaptation (softmax, whole safeguard)",
]


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def time_100_scans(spec: Any, experts: int = 5, scans: int = 100, seed: int = 0) -> dict[str, Any]:
    """Seconds of ``safe_adapt`` (product defaults) over ``scans`` random scans of the spec's
    patch size with ``experts`` random experts: the adaptation-time goal (CPU). Early stopping
    is left to the product defaults; ``steps`` says how many steps ran."""
    import torch

    from data_specs.task_spec import build_unet
    from personalization.outside.safeguard import safe_adapt

    states = []
    for i in range(experts):
        torch.manual_seed(seed + i)
        states.append(build_unet(spec).state_dict())
    gen = torch.Generator().manual_seed(seed)
    items = [
        {"image": torch.randn(1, spec.in_channels, *spec.patch_size, generator=gen)}
        for _ in range(scans)
    ]
    t, cpu = time.perf_counter(), time.process_time()
    result = safe_adapt(spec, states, [f"e{i}" for i in range(experts)], items)
    return {
        "seconds": round(time.perf_counter() - t, 1),
        # CPU time of this process: what the wall time would be on an idle machine with the
        # same thread count, whatever else shares the cores.
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "scans": scans,
        "experts": experts,
        "steps": result.record.steps,
        "threads": torch.get_num_threads(),
    }
