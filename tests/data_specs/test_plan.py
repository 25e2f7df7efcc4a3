"""The federation's plan: deterministic, nnU-Net's rules, CT vs MRI normalisation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from data_specs.constants import InputFit
from data_specs.manifests.fingerprint import INTENSITY_LEVELS, ChannelIntensity, DatasetFingerprint
from data_specs.plan import (
    PlanError,
    PlanOptions,
    combined_class_frequencies,
    make_plan,
    mixture_quantile,
)
from data_specs.task_spec import TaskSpec
from tests.data_specs.fingerprint_data import make_fingerprint

BASE2 = TaskSpec(out_channels=3)
BASE3 = TaskSpec(spatial_dims=3, out_channels=3, patch_size=(32, 32, 32))


def three_sites(modality: str = "mri") -> list[DatasetFingerprint]:
    return [
        make_fingerprint(spacing=(1.0, 1.0, 8.0), shape=(100.0, 130.0, 9.0), modality=modality),
        make_fingerprint(
            spacing=(1.5, 1.5, 10.0), shape=(140.0, 100.0, 11.0), mean=80.0, modality=modality
        ),
        make_fingerprint(
            spacing=(2.0, 2.0, 6.0), shape=(90.0, 90.0, 12.0), voxels=30_000, modality=modality
        ),
    ]


def test_same_fingerprints_in_any_order_give_the_same_plan() -> None:
    sites = three_sites("ct")
    plans = [
        make_plan(list(p), BASE2).model_dump(mode="json") for p in itertools.permutations(sites)
    ]
    assert all(p == plans[0] for p in plans)
    other = make_plan([*sites[:2], make_fingerprint(mean=50.0, modality="ct")], BASE2)
    assert other.fingerprints_sha256 != plans[0]["fingerprints_sha256"]


def test_target_spacing_is_the_median_of_site_medians_and_patch_fits_the_stride() -> None:
    plan = make_plan(three_sites(), BASE2)
    assert plan.target_spacing == (1.5, 1.5)
    spec = plan.spec
    assert spec.target_spacing == (1.5, 1.5) and spec.fit == InputFit.PATCH
    # median field of view (100/210/180 mm, 130/150/180 mm) at the target spacing
    assert plan.median_shape[:2] == pytest.approx((120.0, 100.0))
    unit = 2 ** len(spec.strides)
    assert all(p % unit == 0 for p in spec.patch_size)
    assert len(spec.channels) == len(spec.strides) + 1
    assert spec.channels[0] == 16 and spec.channels == tuple(sorted(spec.channels))
    # the whole median slice fits the budget: the patch is that slice rounded to the stride
    assert spec.patch_size == tuple(max(unit, round(s / unit) * unit) for s in (120.0, 100.0))
    assert math.prod(spec.patch_size) * plan.batch_size <= PlanOptions().budget_voxels_2d
    assert min(spec.patch_size) / unit >= PlanOptions().min_feature_size


def test_whole_slice_128_gives_batch_16_and_five_poolings() -> None:
    sites = [make_fingerprint(spacing=(1.0, 1.0, 10.0), shape=(128.0, 128.0, 10.0))] * 3
    plan = make_plan(sites, BASE2)
    assert plan.spec.patch_size == (128, 128)
    assert plan.spec.strides == (2, 2, 2, 2, 2)
    assert plan.spec.channels == (16, 32, 64, 128, 256, 256)
    assert plan.batch_size == 16  # 16 x 128² is the default budget


def test_large_slices_are_capped_by_the_budget_and_small_datasets_cap_the_batch() -> None:
    big = make_plan([make_fingerprint(shape=(600.0, 500.0, 10.0))], BASE2)
    assert math.prod(big.spec.patch_size) * 2 <= PlanOptions().budget_voxels_2d
    assert max(big.spec.patch_size) <= 512
    tiny = make_plan([make_fingerprint(shape=(64.0, 64.0, 1.0), num_cases=2)], BASE2)
    assert tiny.batch_size == 2  # 5 % of two 64² slices is less than a batch: min_batch


def test_resize_fit_drops_the_target_spacing() -> None:
    plan = make_plan(three_sites(), BASE2, PlanOptions(fit_2d=InputFit.RESIZE))
    assert plan.spec.fit == InputFit.RESIZE and plan.spec.target_spacing is None
    assert plan.target_spacing == (1.5, 1.5)


def test_mri_is_zscored_per_image() -> None:
    plan = make_plan(three_sites("mri"), BASE2)
    assert plan.spec.intensity == "zscore"
    assert plan.spec.clip_range is None and plan.spec.norm_mean_std is None


def test_ct_clips_at_federation_percentiles_then_zscores_with_pooled_stats() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 100.0, 40_000), rng.normal(300.0, 50.0, 120_000)
    sites = [fingerprint_of(a), fingerprint_of(b)]
    plan = make_plan(sites, BASE2)
    pooled = np.concatenate([a, b])
    assert plan.spec.intensity == "ct"
    mean, sd = plan.spec.norm_mean_std  # type: ignore[misc]
    assert mean == pytest.approx(pooled.mean(), rel=1e-4)
    assert sd == pytest.approx(pooled.std(), rel=1e-4)
    lo, hi = plan.spec.clip_range  # type: ignore[misc]
    span = pooled.max() - pooled.min()
    assert lo == pytest.approx(np.percentile(pooled, 0.5), abs=0.02 * span)
    assert hi == pytest.approx(np.percentile(pooled, 99.5), abs=0.02 * span)
    # one site: its own percentiles exactly
    single = make_plan([sites[0]], BASE2)
    assert single.spec.clip_range == pytest.approx(
        (sites[0].channels[0].percentiles[0], sites[0].channels[0].percentiles[-1]), abs=1e-5
    )


def fingerprint_of(values: np.ndarray) -> DatasetFingerprint:
    base = make_fingerprint(modality="ct", voxels=len(values))
    channel = ChannelIntensity(
        modality="ct",  # type: ignore[arg-type]
        percentiles=tuple(float(v) for v in np.percentile(values, INTENSITY_LEVELS)),
        mean=float(values.mean()),
        sd=float(values.std()),
    )
    return base.model_copy(update={"channels": (channel,)})


def test_mixture_quantile_matches_pooled_data() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(-20.0, 15.0, 20_000), rng.normal(20.0, 15.0, 60_000)
    sites = [fingerprint_of(a), fingerprint_of(b)]
    pooled = np.concatenate([a, b])
    for q in (0.005, 0.05, 0.25, 0.5, 0.75, 0.95, 0.995):
        assert mixture_quantile(sites, 0, q) == pytest.approx(np.quantile(pooled, q), abs=3.0)


def test_ct_and_mri_sites_cannot_be_planned_together() -> None:
    with pytest.raises(PlanError, match="modality"):
        make_plan([make_fingerprint(modality="ct"), make_fingerprint(modality="mri")], BASE2)


def test_spec_that_does_not_fit_the_sites_is_refused() -> None:
    with pytest.raises(PlanError, match="out_channels"):
        make_plan(three_sites(), TaskSpec(out_channels=4))
    with pytest.raises(PlanError, match="classes"):
        make_plan([make_fingerprint(), make_fingerprint(classes=(0.5, 0.5))], BASE2)
    with pytest.raises(PlanError, match="at least one"):
        make_plan([], BASE2)


def test_class_frequencies_are_weighted_by_labelled_voxels() -> None:
    sites = [
        make_fingerprint(classes=(0.9, 0.1, 0.0), labelled=1000),
        make_fingerprint(classes=(0.5, 0.2, 0.3), labelled=3000),
    ]
    assert combined_class_frequencies(sites) == pytest.approx([0.6, 0.175, 0.225])
    assert make_plan(sites, BASE2).class_frequencies == pytest.approx((0.6, 0.175, 0.225))


def test_3d_anisotropic_axis_takes_the_tenth_percentile_spacing() -> None:
    sites = [
        make_fingerprint(
            spatial_dims=3,
            spacing=(1.0, 1.0, 5.0),
            p10_spacing=(0.9, 0.9, 3.0),
            shape=(200.0, 200.0, 20.0),
        )
    ] * 3
    plan = make_plan(sites, BASE3)
    assert plan.target_spacing == pytest.approx((1.0, 1.0, 3.0))
    assert any("anisotropic" in n for n in plan.notes)
    assert plan.median_shape == pytest.approx((200.0, 200.0, 20.0 * 5.0 / 3.0), abs=1e-3)
    assert math.prod(plan.spec.patch_size) * 2 <= PlanOptions().budget_voxels_3d
    unit = 2 ** len(plan.spec.strides)
    assert all(p % unit == 0 for p in plan.spec.patch_size)
    iso = make_plan(
        [make_fingerprint(spatial_dims=3, spacing=(1.0, 1.0, 1.2), shape=(64.0, 64.0, 64.0))],
        BASE3,
    )
    assert iso.target_spacing == pytest.approx((1.0, 1.0, 1.2))
    assert iso.spec.patch_size == (64, 64, 64)
