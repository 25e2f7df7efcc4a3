"""Safe adaptation: anchor and share terms, batch-norm modes, the label-free score, fallback."""

from __future__ import annotations

import pytest
import torch

from data_specs.task_spec import TaskSpec, build_unet
from personalization.outside import AdaptConfig, adapt, build_routed_model
from personalization.outside.bn_stats import estimate_site_stats, mixed_stats, read_stats
from personalization.outside.losses import anchor_loss, share_prior_loss
from personalization.outside.safeguard import SafeAdaptConfig, safe_adapt
from personalization.outside.site_score import batches_of, score_model

SPEC = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32))


def _experts(n: int = 3) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        torch.manual_seed(300 + i)
        out.append(build_unet(SPEC).state_dict())
    return out


def _scans(n: int = 8, shift: float = 0.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(1, 1, 32, 32, generator=gen) * 2 + shift for _ in range(n)]


def test_share_prior_is_symmetric_in_log_ratio_and_zero_at_the_prior() -> None:
    prior = torch.tensor([0.9, 0.1])

    def probs(fg: float) -> torch.Tensor:
        p = torch.full((1, 2, 4, 4), 0.0)
        p[:, 1], p[:, 0] = fg, 1 - fg
        return p

    assert float(share_prior_loss(probs(0.1), prior)) == pytest.approx(0.0, abs=1e-9)
    tenth, tenfold = share_prior_loss(probs(0.01), prior), share_prior_loss(probs(1.0), prior)
    assert float(tenth) == pytest.approx(float(torch.log(torch.tensor(10.0)) ** 2), rel=1e-4)
    assert float(tenfold) == pytest.approx(float(tenth), rel=1e-4)


def test_anchor_is_zero_at_the_initial_mix_and_grows_away_from_it() -> None:
    uniform = torch.full((3,), 1 / 3)
    assert float(anchor_loss([uniform.expand(2, 3)], [uniform])) == pytest.approx(0.0, abs=1e-7)
    skewed = torch.tensor([[0.8, 0.1, 0.1]])
    far = torch.tensor([[0.98, 0.01, 0.01]])
    assert 0 < float(anchor_loss([skewed], [uniform])) < float(anchor_loss([far], [uniform]))


@pytest.mark.slow
def test_the_anchor_keeps_routers_near_their_initial_mix() -> None:
    drift = {}
    for weight in (0.0, 100.0):
        model = build_routed_model(SPEC, _experts())
        cfg = AdaptConfig(
            steps=15, lr=5e-2, anchor_weight=weight, consistency_weight=0.0, shape_weight=0.0
        )
        report = adapt(model, [torch.cat(_scans(4))], cfg)
        mix = torch.tensor(next(iter(report.mean_mix.values())))
        drift[weight] = float((mix - 1 / 3).abs().max())
    assert drift[100.0] < drift[0.0]


def test_site_statistics_follow_the_scans_and_leave_the_model_unchanged() -> None:
    model = build_unet(SPEC)
    stored = read_stats(model)
    site = estimate_site_stats(model, batches_of(_scans(8, shift=5.0)))
    assert all(torch.equal(stored[n][0], read_stats(model)[n][0]) for n in stored)
    first = next(iter(site))
    assert float(site[first][0].abs().max()) > float(stored[first][0].abs().max())  # zeros
    mid = mixed_stats(stored, site, 0.5)[first][0]
    assert torch.allclose(mid, (stored[first][0] + site[first][0]) / 2)


def test_score_rewards_a_consistent_foreground_and_gives_nothing_for_an_empty_mask() -> None:
    class Constant(torch.nn.Module):
        def __init__(self, fg: bool) -> None:
            super().__init__()
            self.fg = fg
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
            if self.fg:  # a centred disc, symmetric under flips
                yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
                disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 64
                logits[:, 1] = torch.where(disc, 10.0, -10.0)
            else:
                logits[:, 0] = 10.0
            return logits

    scans = batches_of(_scans(4))
    good, empty = score_model(Constant(True), scans), score_model(Constant(False), scans)
    assert good.consistency == pytest.approx(1.0, abs=1e-3) and empty.consistency < 1e-3
    assert good.score > empty.score
    assert 0 < good.fg_share < 0.3 and empty.fg_share == 0.0


@pytest.mark.slow
def test_a_forced_collapse_is_rejected_and_falls_back_in_plain_words() -> None:
    # A prior of pure background plus a large learning rate drives the routed model's
    # foreground to nothing; the experts themselves predict plenty on these scans.
    cfg = SafeAdaptConfig(
        adapt=AdaptConfig(steps=25, lr=0.5, share_weight=50.0, shape_weight=0.0, anchor_weight=0.0),
        check_every=1000,  # no early stop: let it collapse
        score_scans=8,
    )
    result = safe_adapt(
        SPEC, _experts(), ["global", "a", "b"], _scans(8), cfg, class_prior=[1.0, 0.0]
    )
    rec = result.record
    drift = [r for r in rec.reasons if r.startswith("adaptation drove its predicted foreground")]
    assert drift, rec.reasons  # the collapse was seen, stopped and named
    assert not rec.routed_accepted and rec.choice != "routed"
    assert "rejected" in rec.message and "Falling back" in rec.message
    assert "foreground share" in rec.message
    assert result.chosen is not result.routed
    assert rec.prior_source == "bundle"


@pytest.mark.parametrize("gate", ["softmax", "sigmoid"])
def test_a_sound_adaptation_records_every_candidate_and_a_label_free_prior(gate: str) -> None:
    cfg = SafeAdaptConfig(
        adapt=AdaptConfig(steps=4, lr=1e-3), gate=gate, check_every=2, score_scans=4
    )
    result = safe_adapt(SPEC, _experts(), ["global", "a", "b"], _scans(6), cfg)
    rec = result.record
    names = [c.name for c in rec.candidates]
    assert names == ["global", "expert:a", "expert:b", "routed"]
    assert rec.prior_source == "experts" and sum(rec.class_prior) == pytest.approx(1.0, 1e-4)
    assert rec.gate == gate and 1 <= rec.steps <= 4 and rec.scans == 6
    best = max(rec.candidates, key=lambda c: c.score.score)
    pool = {"global", "expert:a", "expert:b"} | ({"routed"} if rec.routed_accepted else set())
    # The choice is the global model unless a candidate of the pool beats it by the margin.
    glob = rec.candidates[0].score.score
    if rec.choice != "global":
        assert rec.choice in pool
        chosen = next(c for c in rec.candidates if c.name == rec.choice)
        assert chosen.score.score >= glob + cfg.margin
    else:
        assert best.name not in pool or best.score.score < glob + cfg.margin
    assert rec.message


def test_bad_inputs_are_routing_errors() -> None:
    from personalization.outside import RoutingError

    with pytest.raises(RoutingError, match="no scans"):
        safe_adapt(SPEC, _experts(2), ["global", "a"], [])
    with pytest.raises(RoutingError, match="one name per expert"):
        safe_adapt(SPEC, _experts(2), ["global"], _scans(2))
    with pytest.raises(RoutingError, match="class_prior needs 2"):
        safe_adapt(SPEC, _experts(2), ["global", "a"], _scans(2), class_prior=[1.0])


def test_agreement_is_one_for_the_same_masks_and_zero_for_disjoint_ones() -> None:
    from personalization.outside.site_score import agreement

    left = torch.zeros(2, 2, 8, 8)
    left[:, 1, :, :4], left[:, 0, :, 4:] = 1.0, 1.0
    right = left.flip(-1)
    assert agreement([left], [left]) == pytest.approx(1.0)
    assert agreement([left], [right]) == pytest.approx(0.0)
    # Hard masks: confidence alone buys nothing.
    assert agreement([left * 0.4 + 0.3], [left]) == pytest.approx(1.0)
    top = left.clone()
    top[:, :, :4] = right[:, :, :4]  # half the rows agree
    assert 0.0 < agreement([top], [left]) < 1.0


@pytest.mark.slow
def test_plain_models_keep_their_delivered_statistics_unless_asked() -> None:
    # Shifted scans: the site's statistics differ from the stored ones and change the score.
    scans, names = _scans(8, shift=5.0), ["global", "a", "b"]
    cfg = SafeAdaptConfig(adapt=AdaptConfig(steps=2, lr=1e-3))
    default = safe_adapt(SPEC, _experts(), names, scans, cfg)
    plain = [c for c in default.record.candidates if c.name != "routed"]
    assert [c.bn for c in plain] == ["stored"] * 3  # a fallback is the delivered model
    widened = safe_adapt(
        SPEC, _experts(), names, scans, cfg.model_copy(update={"plain_bn_modes": ("site",)})
    )
    assert {c.bn for c in widened.record.candidates if c.name != "routed"} == {"site"}
    got = {c.name: c.score.score for c in widened.record.candidates}
    want = {c.name: c.score.score for c in default.record.candidates}
    assert got["global"] != pytest.approx(want["global"])
