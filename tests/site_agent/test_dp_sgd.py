"""Sample-level DP-SGD at the site (Opacus): per-sample clipping, the accountant's ε, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from aggregator.privacy.privacy_budget import with_privacy
from data_specs.constants import NormKind
from data_specs.privacy.accountant import epsilon as dp_accounting_epsilon
from data_specs.privacy.sample_dp import DPSGDConfig, SampleDPSpent
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.researcher.rounds import RoundPublic, SiteRoundPublic
from data_specs.task_spec import build_unet
from data_specs.wire import PersonalizationConfig, SiteMetrics, TrainConfig
from site_agent.errors import TrainingError
from site_agent.training.trainer import SiteTrainer, cpu_state
from site_agent.training.variants.dp_sgd import check_budget, epsilon_spent
from tests.site_agent.conftest import TINY, SquaresDataset

pytest.importorskip("opacus", reason="opacus (the [dpsgd] extra, pulled by [test]) is missing")

INSTANCE = TINY.model_copy(update={"norm": NormKind.INSTANCE})
NONE = PersonalizationConfig(method="none")


def _start() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return cpu_state(build_unet(INSTANCE))


def _norm(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(
        sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a if a[k].is_floating_point())
    )


@pytest.mark.slow
def test_one_step_moves_the_weights_by_at_most_lr_times_the_clip_norm() -> None:
    # Batch = the whole split, so Poisson sampling at q = 1 takes every case: one SGD step
    # (momentum's first step is the plain gradient) moves the weights by lr · mean of the
    # clipped per-sample gradients, whose norm is ≤ C. Without clipping it is far larger.
    data = SquaresDataset(6, seed=0)
    start = _start()
    clip = 1e-3
    config = TrainConfig(
        batch_size=6, lr=1.0, optimizer="sgd", max_steps=1, seed=1, personalization=NONE
    )
    private = config.model_copy(
        update={"dp_sgd": DPSGDConfig(noise_multiplier=1e-6, max_grad_norm=clip)}
    )
    result = SiteTrainer(INSTANCE, data, progress=False).train_round(start, private)
    moved = _norm(result.state, start)
    assert result.steps == 1
    assert 0.5 * clip < moved <= clip * (1 + 1e-3)
    plain = SiteTrainer(INSTANCE, data, progress=False).train_round(start, config)
    assert _norm(plain.state, start) > 20 * clip  # the clip is what bounded the step
    spent = result.metrics.dp_sgd
    assert spent is not None and spent.steps == 1 and spent.sample_rate == 1.0


@pytest.mark.slow
def test_reported_epsilon_is_the_accountants_for_the_config() -> None:
    data = SquaresDataset(8, seed=1)
    dp = DPSGDConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    config = TrainConfig(
        batch_size=2,
        lr=0.01,
        optimizer="sgd",
        max_steps=2,
        seed=2,
        personalization=NONE,
        dp_sgd=dp,
    )
    result = SiteTrainer(INSTANCE, data, progress=False).train_round(_start(), config, round_=3)
    spent = result.metrics.dp_sgd
    assert spent is not None
    q = 2 / 8  # Opacus's rate: 1 / batches per epoch
    assert spent.sample_rate == pytest.approx(q) and spent.steps == 2
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    for _ in range(2):
        reference.step(noise_multiplier=1.1, sample_rate=q)
    assert spent.epsilon_round == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert spent.epsilon_total == pytest.approx(epsilon_spent(1.1, q, 6, 1e-5), rel=1e-9)
    assert spent.epsilon_total > spent.epsilon_round > 0
    # Google's dp-accounting (another maintained RDP accountant) agrees within its orders' grid.
    assert spent.epsilon_round == pytest.approx(dp_accounting_epsilon(1.1, q, 2, 1e-5), rel=0.05)
    assert spent.epsilon_total == pytest.approx(dp_accounting_epsilon(1.1, q, 6, 1e-5), rel=0.05)
    # the total after one more such round: what the aggregator holds against the budget
    assert spent.epsilon_next == pytest.approx(epsilon_spent(1.1, q, 8, 1e-5), rel=1e-9)


@pytest.mark.slow
def test_a_round_over_the_budget_is_not_trained() -> None:
    q, rounds = 2 / 8, 3
    total = epsilon_spent(1.1, q, 2 * rounds, 1e-5)  # 2 steps a round, counted 3 times
    over = DPSGDConfig(noise_multiplier=1.1, epsilon_budget=total * 0.99)
    fits = DPSGDConfig(noise_multiplier=1.1, epsilon_budget=total * 1.01)
    check_budget(fits, batches=4, epochs=1, max_steps=2, round_=rounds)
    check_budget(over, batches=4, epochs=1, max_steps=2, round_=rounds - 1)
    check_budget(DPSGDConfig(noise_multiplier=1.1), batches=4, epochs=1, max_steps=2, round_=99)
    with pytest.raises(TrainingError, match=r"round 3 \(2 steps\).*over the budget"):
        check_budget(over, batches=4, epochs=1, max_steps=2, round_=rounds)
    with pytest.raises(TrainingError, match="over the budget"):  # no max_steps: 4 steps
        check_budget(fits, batches=4, epochs=1, max_steps=None, round_=rounds)
    config = TrainConfig(
        batch_size=2, max_steps=2, seed=2, personalization=NONE, optimizer="sgd", dp_sgd=over
    )
    trainer = SiteTrainer(INSTANCE, SquaresDataset(8, seed=1), progress=False)
    start = _start()
    with pytest.raises(TrainingError, match="over the budget"):
        trainer.train_round(start, config, round_=rounds)
    assert _norm(cpu_state(trainer.model), start) == 0.0  # nothing trained


@pytest.mark.slow
def test_empty_poisson_batches_step_and_noise_is_not_the_seeds(monkeypatch) -> None:
    # q = 1/8: about a third of the batches draw no case; each is still a noisy step.
    import site_agent.training.variants.dp_sgd as dp_sgd

    empty = []
    real, real_entropy = dp_sgd._empty_step, dp_sgd._entropy
    monkeypatch.setattr(dp_sgd, "_empty_step", lambda *a: (empty.append(1), real(*a)))
    monkeypatch.setattr(dp_sgd, "_entropy", lambda: 4)  # draws 3, 0, 1, 0, 0, 0, 2, 1 cases
    data = SquaresDataset(8, seed=2)
    config = TrainConfig(
        batch_size=1,
        lr=0.01,
        optimizer="sgd",
        seed=5,
        personalization=NONE,
        dp_sgd=DPSGDConfig(noise_multiplier=1.0),
    )
    result = SiteTrainer(INSTANCE, data, progress=False).train_round(_start(), config)
    assert result.steps == 8 and len(empty) == 4
    assert result.metrics.train_loss is not None and math.isfinite(result.metrics.train_loss)
    assert result.metrics.dp_sgd is not None and result.metrics.dp_sgd.steps == 8
    # The same seed (the aggregator knows it) must not replay the batches or the noise.
    monkeypatch.setattr(dp_sgd, "_entropy", real_entropy)
    again = SiteTrainer(INSTANCE, data, progress=False).train_round(_start(), config)
    assert _norm(again.state, result.state) > 0


def test_batch_norm_is_refused_with_the_instance_norm_hint() -> None:
    config = TrainConfig(batch_size=2, max_steps=1, personalization=NONE, dp_sgd=DPSGDConfig())
    trainer = SiteTrainer(TINY, SquaresDataset(4, seed=0), progress=False)
    torch.manual_seed(0)
    with pytest.raises(TrainingError, match=r"batch norm.*instance"):
        trainer.train_round(cpu_state(build_unet(TINY)), config)
    body = {"name": "x", "spec": TINY.model_dump(mode="json"), "rounds": 1}
    body["train"] = config.model_dump(mode="json")
    with pytest.raises(ValueError, match=r"spec\.norm='instance'"):
        ExperimentCreate.model_validate(body)
    body["spec"] = INSTANCE.model_dump(mode="json")
    assert ExperimentCreate.model_validate(body).train.dp_sgd == DPSGDConfig()
    body["train"]["fedprox_mu"] = 0.1
    with pytest.raises(ValueError, match="fedprox"):
        ExperimentCreate.model_validate(body)


def test_rounds_api_shows_the_largest_site_epsilon() -> None:
    from datetime import UTC, datetime

    def site(i: int, eps: float | None) -> SiteRoundPublic:
        spent = None
        if eps is not None:
            spent = SampleDPSpent(
                epsilon_round=eps / 2,
                epsilon_total=eps,
                delta=1e-5,
                noise_multiplier=1.1,
                max_grad_norm=1.0,
                sample_rate=0.25,
                steps=4,
            )
        return SiteRoundPublic(
            site_id=f"s{i}",
            site_name=f"s{i}",
            task_id=f"t{i}",
            status="accepted",
            num_samples=8,
            metrics=SiteMetrics(dp_sgd=spent),
            bytes_up=0,
            bytes_down=0,
            update_sha256=None,
            reject_reason=None,
            failure_reason=None,
            reported_at=None,
        )

    now = datetime.now(UTC)
    closed = RoundPublic(
        number=2,
        attempt=0,
        status="closed",
        sampled=["s1", "s2", "s3"],
        opened_at=now,
        deadline=now,
        closed_at=now,
        reason=None,
        model_sha256=None,
        sites=[site(1, 3.0), site(2, 5.0), site(3, None)],
    )
    body = {
        "name": "x",
        "spec": INSTANCE.model_dump(mode="json"),
        "rounds": 2,
        "train": {"dp_sgd": {"noise_multiplier": 1.1}},
    }
    (out,) = with_privacy([closed], ExperimentCreate.model_validate(body), ["s1", "s2", "s3"])
    assert out.sample_privacy is not None
    assert (out.sample_privacy.epsilon_total, out.sample_privacy.epsilon_round) == (5.0, 2.5)
    assert out.sample_privacy.sites == 2 and out.privacy is None
    body["train"] = {}
    (plain,) = with_privacy([closed], ExperimentCreate.model_validate(body), ["s1"])
    assert plain.sample_privacy is None
