"""The training recipe's pieces: poly LR across rounds, foreground sampling, batch augmentation,
precision, resize prediction, and scores in the scan's own geometry."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.constants import InputFit
from data_specs.manifests.manifest import load_manifest
from data_specs.task_spec import TaskSpec
from data_specs.wire import TrainConfig
from site_agent.clinic.scan_evaluation import evaluate_cases, load_eval_cases, volume_dice
from site_agent.training.batch_augment import BatchAugment
from site_agent.training.local_training import poly_lr
from site_agent.training.precision import autocast, use_bf16
from tests.data_specs.tiny_data import tiny_site
from tests.site_agent.conftest import SquaresDataset

RESIZE = TaskSpec(
    out_channels=3,
    channels=(4, 8),
    strides=(2,),
    patch_size=(16, 16),
    num_res_units=1,
    fit=InputFit.RESIZE,
)


def test_poly_lr_is_continuous_across_rounds_and_reaches_zero() -> None:
    total, steps = 5, 7
    rounds = [poly_lr(0.1, round_=r, total_rounds=total, steps_per_round=steps) for r in (1, 2, 3)]
    assert rounds[0](0) == pytest.approx(0.1)
    # The step after the last of round r is the first of round r + 1.
    for r in (0, 1):
        assert rounds[r](steps) == pytest.approx(rounds[r + 1](0))
    values = [rounds[0](s) for s in range(steps)] + [rounds[1](s) for s in range(steps)]
    assert all(a > b for a, b in itertools.pairwise(values))
    last = poly_lr(0.1, round_=total, total_rounds=total, steps_per_round=steps)
    assert last(steps) == 0.0
    assert 0 < last(steps - 1) < 0.1 * (1 / (total * steps)) ** 0.9 * 1.01


@pytest.mark.slow  # a subprocess, a real server or real training
def test_trainer_applies_the_poly_schedule_and_keeps_the_optimiser(tiny_spec: TaskSpec) -> None:
    from site_agent.training.trainer import SiteTrainer

    config = TrainConfig(
        batch_size=4,
        lr=0.05,
        optimizer="adam",
        lr_schedule="poly",
        persist_optimizer=True,
        precision="fp32",
    )
    trainer = SiteTrainer(tiny_spec, SquaresDataset(8, seed=0), progress=False)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_round(state, config, round_=2, total_rounds=4, tag="e")
    saved = trainer.optimizer_states["e/main"]
    steps = 2  # 8 items, batch 4, one epoch
    expected = poly_lr(0.05, round_=2, total_rounds=4, steps_per_round=steps)(steps - 1)
    assert saved["param_groups"][0]["lr"] == pytest.approx(expected)
    first_step_count = max(int(s["step"]) for s in saved["state"].values())
    trainer.train_round(state, config, round_=3, total_rounds=4, tag="e")
    again = trainer.optimizer_states["e/main"]
    # The Adam moments carried over: step counts continue instead of restarting at 1.
    assert max(int(s["step"]) for s in again["state"].values()) == first_step_count + steps


def _fg_share(ratio: float, n: int = 300) -> float:
    from data_specs.imaging.transforms import augment_transforms

    spec = TaskSpec(patch_size=(16, 16), channels=(4, 8), strides=(2,))
    label = torch.zeros(1, 64, 64)
    label[:, 29:35, 29:35] = 1  # 36 of 4096 pixels
    image = torch.rand(1, 64, 64)
    pipe = augment_transforms(spec, seed=3, random_crop=True, augment=False, foreground_ratio=ratio)
    hits = 0
    for _ in range(n):
        out = pipe({"image": image, "label": label})
        assert tuple(out["image"].shape) == (1, 16, 16)
        hits += int(out["label"][0, 8, 8] > 0)  # the patch is centred on a labelled pixel
    return hits / n


@pytest.mark.slow
def test_foreground_oversampling_holds_its_ratio() -> None:
    assert _fg_share(1.0) == 1.0
    assert 0.4 <= _fg_share(0.5) <= 0.6
    assert _fg_share(0.0) < 0.05  # uniform patches almost never centre on 36 of 4096 pixels


def test_batch_augment_moves_images_and_labels_together() -> None:
    images = torch.rand(16, 1, 8, 8)
    labels = (images > 0.5).long()
    aug = BatchAugment(2, seed=1, intensity=0.0)
    x, y = aug(images, labels)
    assert torch.equal((x > 0.5).long(), y)  # the same flip / turn on both
    assert not torch.equal(x, images)  # something moved
    x2, _ = BatchAugment(2, seed=1, intensity=0.0)(images, labels)
    assert torch.equal(x, x2)  # reproducible for a seed
    # Each sample is a dihedral transform of itself: same multiset of values.
    for a, b in zip(images, x, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)


def test_precision_setting() -> None:
    assert use_bf16("fp32", "cpu") is False
    assert use_bf16("bf16", "cpu") is True
    lin = torch.nn.Linear(4, 4)
    with autocast(True, "cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(False, "cpu"):
        assert lin(torch.randn(2, 4)).dtype == torch.float32


class _AllClassOne(torch.nn.Module):
    """Predicts class 1 everywhere (a hand-checkable model)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.bn = torch.nn.BatchNorm2d(1)  # something to switch to eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes, *x.shape[2:])
        out[:, 1] = 1.0
        return out


def test_dice_in_original_geometry_matches_a_hand_computed_case(tmp_path: Path) -> None:
    # 3D volumes of 20x24 slices: the resize recipe predicts at 16x16 and maps back.
    manifest = load_manifest(tiny_site(tmp_path, n_train=1, n_val=1, n_test=2, shape=(20, 24, 3)))
    cases = load_eval_cases(manifest, RESIZE, "test")
    assert [c.label.shape for c in cases] == [(20, 24, 3)] * 2
    result = evaluate_cases(_AllClassOne(3), cases, RESIZE, hd95=False)
    expected = []
    for c in cases:
        t1, t2 = int((c.label == 1).sum()), int((c.label == 2).sum())
        expected.append([2 * t1 / (c.label.size + t1), 0.0 if t2 else 1.0])
    want = np.mean(expected, axis=0)
    assert result.dice_per_class == pytest.approx(list(want))
    assert result.mean_dice == pytest.approx(float(want.mean()))
    assert result.num_cases == 2


def test_volume_dice_by_hand() -> None:
    truth = np.zeros((4, 4, 2), dtype=np.int64)
    truth[:2, :2, 0] = 1  # 4 voxels of class 1
    pred = np.zeros_like(truth)
    pred[:2, :1, 0] = 1  # 2 of them found
    pred[3, 3, 1] = 2  # class 2 predicted where there is none
    assert volume_dice(pred, truth, 3) == pytest.approx([2 * 2 / (2 + 4), 0.0])
    assert volume_dice(truth, truth, 3) == [1.0, 1.0]  # absent on both sides scores 1


def test_resampling_to_the_plan_spacing_round_trips_the_geometry(tmp_path: Path) -> None:
    from data_specs.imaging.imageio import read_image
    from data_specs.imaging.transforms import prepare_scan

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    manifest_path = tiny_site(
        tmp_path, n_train=1, n_val=0, n_test=0, shape=(16, 16, 8), affine=affine
    )
    case = load_manifest(manifest_path).resolve(load_manifest(manifest_path).training[0])
    spec = TaskSpec(
        spatial_dims=3,
        out_channels=3,
        channels=(4, 8),
        strides=(2,),
        patch_size=(16, 16, 16),
        target_spacing=(1.0, 1.0, 1.0),
    )
    prepared = prepare_scan(case.image, spec)
    assert tuple(prepared.image.shape[1:]) == (24, 24, 15)  # resampled to 1 mm (MONAI extent)
    label = read_image(case.label, label=True)
    # The label resampled the same way, then carried back, lands on the original grid.
    resampled = prepare_scan(case.label, spec.model_copy(update={"intensity": "none"}))
    back = prepared.to_scan_geometry(resampled.image[0].round().long())
    original = np.asarray(label.array).reshape(back.shape)
    assert back.shape == label.spatial_shape
    assert np.array_equal(prepared.geometry.affine, label.affine)
    agree = (back == original).mean()
    assert agree > 0.95


def test_hd95_on_the_cropped_box_equals_the_full_volume() -> None:
    from monai.metrics import compute_hausdorff_distance

    from site_agent.clinic.scan_evaluation import volume_hd95

    rng = np.random.default_rng(0)
    truth = np.zeros((40, 36, 6), dtype=np.int64)
    truth[10:20, 12:22, 1:4] = 1
    pred = np.zeros_like(truth)
    pred[11:22, 10:21, 2:5] = 1
    pred[rng.integers(0, 40, 5), rng.integers(0, 36, 5), 0] = 1  # stray voxels far away
    spacing = (1.5, 1.2, 5.0)
    full = compute_hausdorff_distance(
        torch.from_numpy(pred == 1)[None, None],
        torch.from_numpy(truth == 1)[None, None],
        include_background=True,
        percentile=95,
        spacing=list(spacing),
    )
    got = volume_hd95(pred, truth, 2, spacing)
    assert got[0] == pytest.approx(float(full.reshape(-1)[0]))
