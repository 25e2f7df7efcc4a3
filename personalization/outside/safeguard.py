"""Safe adaptation for an outside site: adapt the routed model, check it, fall back if needed.

``safe_adapt`` never hands back a model that its own label-free evidence says is worse than the
models it started from:

1. Score every expert (the global model and each shared personal model) on the site's scans
   (``site_score``: flip consistency minus entropy) with the batch-norm statistics it was
   delivered with (``plain_bn_modes``; by default only ``stored``, so that a fallback is exactly
   the model the federation delivered: site statistics lower the entropy, which the score
   rewards, even where they lower Dice).
2. The class prior: the federation's aggregate class frequencies when the routing bundle
   carries them, else the experts' mean predicted class shares on these scans.
3. Adapt the routed model (routers + norm affine parameters; entropy, flip consistency, the
   class prior, a foreground-share penalty and an anchor to the initial mix), checking the
   label-free score every ``check_every`` steps: stop early when it stops improving or when
   the foreground share leaves the experts' range, and keep the best state seen (the starting
   mix included).
4. Reject the routed model when its score falls below every expert's, its predicted
   foreground share leaves the range the experts produce (widened by ``share_tolerance``), or
   it agrees with the federation's consensus (the mean prediction of the unadapted models)
   less than the best plain model does, by more than ``agreement_tolerance``: the score is
   what adaptation optimises, agreement is what it cannot game.
5. The best plain model is the global model unless the best single expert beats its score by
   ``margin``; the routed model (if not rejected) replaces it only if it beats that score by
   ``margin`` too.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from data_specs.task_spec import TaskSpec
from personalization.outside.adapt import AdaptConfig, AdaptReport, StepLosses, adapt
from personalization.outside.baselines import global_model
from personalization.outside.bn_stats import (
    BN_MODES,
    BnMode,
    BnStats,
    estimate_site_stats,
    read_stats,
    stats_for,
    write_stats,
)
from personalization.outside.errors import RoutingError
from personalization.outside.layers import Gate
from personalization.outside.routed import RoutedUNet, build_routed_model
from personalization.outside.site_score import (
    SiteScore,
    agreement,
    batches_of,
    predictions,
    score_model,
)


class SafeAdaptConfig(BaseModel):
    """Settings of ``safe_adapt``.

    Args:
        adapt: the adaptation itself (steps, lr, loss weights, seed). Default
            ``AdaptConfig(steps=60, lr=3e-3)``.
        gate: the routers' gate, ``"softmax"`` or ``"sigmoid"``. Default ``"softmax"``.
        bn_modes: batch-norm statistics compared for the routed model (``bn_stats``). Default
            ``("stored", "site", "mix")``.
        plain_bn_modes: batch-norm statistics compared for the federation's plain models
            (global, experts). Default ``("stored",)``: a fallback is the delivered model.
        bn_mix: weight of the site's statistics in ``mix``. Default ``0.5``.
        max_scans: scans read from the loader (adaptation cycles over them). Default ``128``.
        score_scans: scans the label-free score uses (evenly spaced). Default ``24``.
        batch_size: scans per adaptation step. Default ``4``.
        check_every: steps between early-stopping checks. Default ``15``.
        patience: checks without improvement before stopping. Default ``2``.
        share_tolerance: the admissible foreground share is the experts' range divided and
            multiplied by this factor. Default ``2.0``.
        margin: score a candidate must gain over the global model to replace it.
            Default ``0.01``.
        agreement_tolerance: how much less than the best plain model the routed model may
            agree with the federation's consensus. Default ``0.02``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapt: AdaptConfig = AdaptConfig(steps=60, lr=3e-3)
    gate: Gate = "softmax"
    bn_modes: tuple[BnMode, ...] = BN_MODES
    plain_bn_modes: tuple[BnMode, ...] = ("stored",)
    bn_mix: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    max_scans: Annotated[int, Field(ge=1, le=100_000)] = 128
    score_scans: Annotated[int, Field(ge=1, le=100_000)] = 24
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 4
    check_every: Annotated[int, Field(ge=1)] = 15
    patience: Annotated[int, Field(ge=1)] = 2
    share_tolerance: Annotated[float, Field(ge=1.0)] = 2.0
    margin: Annotated[float, Field(ge=0.0)] = 0.01
    agreement_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02


class Candidate(BaseModel):
    """One model the site could use, scored label-free.

    Args:
        name: ``"global"``, ``"expert:<site>"`` or ``"routed"``.
        bn: the batch-norm statistics it uses.
        score: its label-free score under ``bn``.
    """

    name: str
    bn: BnMode
    score: SiteScore


class SafeAdaptRecord(BaseModel):
    """What ``safe_adapt`` decided, as written to the work dir (``routed/<id>.choice.json``)."""

    choice: str
    bn: BnMode
    routed_accepted: bool
    message: str
    reasons: list[str]
    gate: Gate
    class_prior: list[float]
    prior_source: Literal["bundle", "experts"]
    share_range: tuple[float, float]
    steps: int
    stopped_early: bool
    scans: int
    seconds: float
    candidates: list[Candidate]


@dataclass
class SafeAdaptResult:
    """``record`` plus the models: ``chosen`` (what the site should use) and ``routed``."""

    record: SafeAdaptRecord
    chosen: nn.Module
    routed: RoutedUNet
    report: AdaptReport
    experts: dict[str, nn.Module] = field(default_factory=dict)


def collect_scans(loader: Iterable[Any], limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` single images ``(1, C, ...)`` from a loader of tensors or dicts (labels
    are never read)."""
    out: list[torch.Tensor] = []
    for batch in loader:
        image = batch["image"] if isinstance(batch, Mapping) and "image" in batch else batch
        if not isinstance(image, torch.Tensor):
            raise RoutingError(f"expected image tensors, got {type(batch).__name__}")
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        out.extend(image[i : i + 1].float() for i in range(image.shape[0]))
        if len(out) >= limit:
            break
    if not out:
        raise RoutingError("no scans to adapt on: the loader yielded no images")
    return out[:limit]


def _best_mode(
    model: nn.Module,
    scans: list[torch.Tensor],
    config: SafeAdaptConfig,
    candidates: Sequence[BnMode],
) -> tuple[BnMode, SiteScore, BnStats]:
    """Score ``model`` under each of ``candidates`` batch-norm modes; leave it in the best one."""
    stored = read_stats(model)
    modes: Sequence[BnMode] = candidates if stored else ("stored",)
    site = estimate_site_stats(model, scans) if stored else stored
    best: tuple[BnMode, SiteScore, BnStats] | None = None
    for mode in modes:
        stats = stats_for(mode, stored, site, config.bn_mix)
        write_stats(model, stats)
        s = score_model(model, scans)
        if best is None or s.score > best[1].score:
            best = (mode, s, stats)
    assert best is not None
    write_stats(model, best[2])
    return best


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def safe_adapt(
    spec: TaskSpec,
    experts: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    loader: Iterable[Any],
    config: SafeAdaptConfig | None = None,
    *,
    class_prior: Sequence[float] | None = None,
) -> SafeAdaptResult:
    """Adapt a routed model to a site's unlabelled scans, check it, and choose what to use.

    Args:
        spec: the task spec. Example: ``bundle.spec``.
        experts: K + 1 plain U-Net state dicts, expert 0 the global model.
        names: a name per expert, for messages and ``expert:<name>``. Example:
            ``["global", "hospital-b"]``.
        loader: the site's scans: tensors or dicts with ``"image"`` (labels ignored).
        config: settings. Default ``SafeAdaptConfig()``.
        class_prior: the federation's class frequencies (background first); default None
            derives them from the experts' predictions on these scans.

    Returns:
        The decision and the models; ``result.record.message`` says it in plain words.

    Raises:
        RoutingError: no scans, experts that do not fit the spec, or a bad class prior.
    """
    config = config or SafeAdaptConfig()
    started = time.perf_counter()
    if len(names) != len(experts):
        raise RoutingError(f"expected one name per expert ({len(experts)}), got {len(names)}")
    scans = collect_scans(loader, config.max_scans)
    stride = max(1, len(scans) // config.score_scans)
    score_batches = batches_of(scans[::stride][: config.score_scans])
    adapt_batches = batches_of(scans, config.batch_size)

    plain: dict[str, nn.Module] = {}
    scored: dict[str, tuple[BnMode, SiteScore]] = {}
    for i, (name, state) in enumerate(zip(names, experts, strict=True)):
        key = "global" if i == 0 else f"expert:{name}"
        model = global_model(spec, state)
        mode, s, _ = _best_mode(model, score_batches, config, config.plain_bn_modes)
        plain[key], scored[key] = model, (mode, s)

    if class_prior is not None:
        if len(class_prior) != spec.out_channels:
            raise RoutingError(
                f"class_prior needs {spec.out_channels} entries, got {len(class_prior)}"
            )
        prior, prior_source = [float(p) for p in class_prior], "bundle"
    else:
        shares = torch.tensor([s.class_shares for _, s in scored.values()])
        prior, prior_source = [float(p) for p in shares.mean(dim=0)], "experts"
    expert_shares = [s.fg_share for _, s in scored.values()]
    lo = min(expert_shares) / config.share_tolerance
    hi = min(1.0, max(expert_shares) * config.share_tolerance)
    # The federation's consensus on these scans, and each plain model's agreement with it.
    preds = {k: predictions(m, score_batches) for k, m in plain.items()}
    consensus = [torch.stack(batch).mean(dim=0) for batch in zip(*preds.values(), strict=True)]
    for k, (mode, s) in scored.items():
        scored[k] = (mode, s.model_copy(update={"agreement": agreement(preds[k], consensus)}))
    experts_only = [k for k in scored if k != "global"]
    best_expert = max(experts_only, key=lambda k: scored[k][1].score) if experts_only else None
    best_plain = "global"
    if best_expert and scored[best_expert][1].score >= scored["global"][1].score + config.margin:
        best_plain = best_expert
    plain_agreement = scored[best_plain][1].agreement or 0.0
    agree_floor = plain_agreement - config.agreement_tolerance

    experts_t = [{k: torch.as_tensor(v) for k, v in e.items()} for e in experts]
    routed = build_routed_model(spec, experts_t, gate=config.gate, seed=config.adapt.seed)
    run_cfg = config.adapt.model_copy(update={"class_prior": tuple(prior)})
    best: dict[str, Any] = {"score": float("-inf"), "state": None}
    checks: dict[str, Any] = {"stale": 0, "early": False, "drift": None}
    # The starting point (the initial mix) is a candidate too: an adaptation that only makes
    # the label-free score worse leaves the routed model where it started.
    modes = [m.training for m in routed.modules()]
    start = score_model(routed, score_batches)
    for m, was in zip(routed.modules(), modes, strict=True):
        m.train(was)
    if lo <= start.fg_share <= hi:
        best.update(score=start.score, state=copy.deepcopy(routed.state_dict()))

    def monitor(step: int, _losses: StepLosses) -> bool:
        if (step + 1) % config.check_every and step + 1 < run_cfg.steps:
            return False
        modes = [m.training for m in routed.modules()]
        s = score_model(routed, score_batches)
        agree = agreement(predictions(routed, score_batches), consensus)
        for m, was in zip(routed.modules(), modes, strict=True):
            m.train(was)
        if not lo <= s.fg_share <= hi or agree < agree_floor:  # drifting away: stop here
            checks["early"] = step + 1 < run_cfg.steps
            checks["drift"] = (
                f"adaptation drove its predicted foreground share to {_percent(s.fg_share)} "
                f"(the federation's models: {_percent(min(expert_shares))}–"
                f"{_percent(max(expert_shares))}) and its agreement with their consensus to "
                f"{agree:.3f}, so it was stopped at step {step + 1}"
            )
            return True
        if s.score > best["score"]:
            best.update(score=s.score, state=copy.deepcopy(routed.state_dict()))
            checks["stale"] = 0
        else:
            checks["stale"] += 1
            if checks["stale"] >= config.patience:
                checks["early"] = step + 1 < run_cfg.steps
                return True
        return False

    report = adapt(routed, adapt_batches, run_cfg, monitor=monitor)
    if best["state"] is not None:
        routed.load_state_dict(best["state"])
    # Batch-norm modes of the routed model: the global model's stored statistics, the site's
    # (re-estimated with the final routers), or their mix.
    write_stats(routed, _stored_of(experts_t[0], routed))
    r_mode, r_score, _ = _best_mode(routed, score_batches, config, config.bn_modes)
    r_agree = agreement(predictions(routed, score_batches), consensus)
    r_score = r_score.model_copy(update={"agreement": r_agree})

    reasons: list[str] = []
    if checks["drift"]:  # a runaway adaptation is not trusted, even rewound to a sound state
        reasons.append(checks["drift"])
    floor = min(s.score for _, s in scored.values())
    if r_score.score < floor:
        reasons.append(
            f"its label-free score {r_score.score:.3f} is below every federation model's "
            f"(lowest {floor:.3f})"
        )
    if not lo <= r_score.fg_share <= hi:
        reasons.append(
            f"its predicted foreground share is {_percent(r_score.fg_share)} while the "
            f"federation's models predict {_percent(min(expert_shares))}–"
            f"{_percent(max(expert_shares))} on these scans"
        )
    if r_agree < agree_floor:
        reasons.append(
            f"its masks agree less with the federation's consensus on these scans than the "
            f"{_label(best_plain)} does (mask Dice {r_agree:.3f} against {plain_agreement:.3f})"
        )
    accepted = not reasons
    table = {**scored, "routed": (r_mode, r_score)}
    choice = best_plain
    if accepted and r_score.score >= table[best_plain][1].score + config.margin:
        choice = "routed"
    message = _message(choice, table, accepted, reasons, report.steps)
    chosen: nn.Module = routed if choice == "routed" else plain[choice]
    record = SafeAdaptRecord(
        choice=choice,
        bn=table[choice][0],
        routed_accepted=accepted,
        message=message,
        reasons=reasons,
        gate=config.gate,
        class_prior=[round(p, 6) for p in prior],
        prior_source=prior_source,  # type: ignore[arg-type]
        share_range=(round(lo, 6), round(hi, 6)),
        steps=report.steps,
        stopped_early=bool(checks["early"]),
        scans=len(scans),
        seconds=round(time.perf_counter() - started, 3),
        candidates=[Candidate(name=k, bn=m, score=s) for k, (m, s) in table.items()],
    )
    return SafeAdaptResult(
        record=record, chosen=chosen.eval(), routed=routed.eval(), report=report, experts=plain
    )


def _stored_of(global_state: Mapping[str, torch.Tensor], routed: RoutedUNet) -> BnStats:
    """The global model's own running statistics, keyed by the routed model's module names."""
    out: BnStats = {}
    for name in read_stats(routed):
        plain = name.removeprefix("unet.")
        out[name] = (
            global_state[f"{plain}.running_mean"].clone(),
            global_state[f"{plain}.running_var"].clone(),
        )
    return out


def _label(choice: str) -> str:
    if choice.startswith("expert:"):
        return f"{choice.removeprefix('expert:')} model"
    return f"{choice} model"


def _message(
    choice: str,
    table: Mapping[str, tuple[BnMode, SiteScore]],
    accepted: bool,
    reasons: list[str],
    steps: int,
) -> str:
    mode, s = table[choice]
    stats = {"stored": "the federation's", "site": "this site's", "mix": "mixed"}[mode]
    used = f"using the {_label(choice)} with {stats} batch-norm statistics"
    if not accepted:
        return (
            f"The adapted routed model was rejected: {'; and '.join(reasons)}. Falling back "
            f"to the best of the federation's models on these scans: {used} "
            f"(label-free score {s.score:.3f})."
        )
    if choice == "routed":
        return (
            f"The routed model adapted in {steps} steps, agrees with the federation's models "
            f"and scores best on these scans (label-free score {s.score:.3f} against "
            f"{table['global'][1].score:.3f} for the global model); {used}."
        )
    return (
        f"The adapted routed model (label-free score {table['routed'][1].score:.3f}) is not "
        f"better than the federation's own models on these scans; {used} "
        f"(score {s.score:.3f})."
    )
