"""Client-level DP at the site: the upload is the clipped difference W − θ, local keys as zeros;
the site keeps its own batch-norm running statistics and uses them with the global model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_specs.constants import BundleKind
from data_specs.task_spec import TaskSpec, expected_tensors
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from data_specs.weights.unet_layout import statistic_keys_of
from data_specs.wire import SiteMetrics, TaskAssignment, TrainConfig
from site_agent.clinic.models import load_model
from site_agent.federation.update_files import RoundFiles
from site_agent.federation.uploads.dp_statistics import (
    load_statistics,
    save_statistics,
    with_statistics,
)
from site_agent.federation.workdir import WorkDir
from site_agent.training.trainer import TrainResult

SPEC = TaskSpec(spatial_dims=2, channels=(4, 8), strides=(2,), patch_size=(16, 16))


def _task(clip_norm: float | None, local_keys: list[str]) -> TaskAssignment:
    return TaskAssignment(
        task_id="t1",
        experiment_id="e1",
        round=1,
        spec=SPEC,
        spec_hash=SPEC.spec_hash(),
        model_sha256="0" * 64,
        model_size=0,
        train=TrainConfig(),
        local_keys=local_keys,
        clip_norm=clip_norm,
    )


def _states() -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    rng = np.random.default_rng(0)
    theta = {}
    for key, (shape, dtype) in expected_tensors(SPEC).items():
        theta[key] = (
            rng.standard_normal(shape).astype(dtype)
            if dtype.startswith("float")
            else np.zeros(shape, dtype)
        )
    trained = {
        k: torch.from_numpy(np.asarray(v + 1 if v.dtype.kind == "f" else v + 2))
        for k, v in theta.items()
    }
    return theta, trained


@pytest.mark.parametrize("clip_norm", [0.5, 1e6])
def test_upload_is_the_clipped_difference(tmp_path: Path, clip_norm: float) -> None:
    theta, trained = _states()
    float_keys = [k for k, v in theta.items() if v.dtype.kind == "f"]
    local = [k for k in float_keys if k.endswith(".bias")][:1]
    files = RoundFiles(WorkDir(tmp_path), _task(clip_norm, local))
    _, sha = files.write_update(TrainResult(trained, 10, SiteMetrics()), theta)
    bundle = decode_bundle(files.read_update(sha))
    assert bundle.meta.kind == BundleKind.DIFF
    shared = [k for k in float_keys if k not in local]
    norm = np.sqrt(sum(float(np.sum(bundle.tensors[k].astype(np.float64) ** 2)) for k in shared))
    full_norm = np.sqrt(sum(theta[k].size for k in shared))  # every entry moved by 1
    assert norm == pytest.approx(min(clip_norm, full_norm), rel=1e-5)
    assert files.unclipped is bool(full_norm <= clip_norm)  # adaptive clipping's bit
    # a local key's value never leaves: zeros, although it moved by 1
    np.testing.assert_array_equal(bundle.tensors[local[0]], np.zeros_like(theta[local[0]]))


def test_without_clip_norm_the_full_weights_travel(tmp_path: Path) -> None:
    theta, trained = _states()
    files = RoundFiles(WorkDir(tmp_path), _task(None, []))
    _, sha = files.write_update(TrainResult(trained, 10, SiteMetrics()), theta)
    assert decode_bundle(files.read_update(sha)).meta.kind == BundleKind.FULL


def test_site_keeps_its_running_statistics_and_uses_them_with_the_global(tmp_path: Path) -> None:
    theta, trained = _states()
    workdir = WorkDir(tmp_path)
    stats = statistic_keys_of(SPEC)
    assert stats and all(k in theta for k in stats)
    assert load_statistics(workdir, "e1") is None
    assert with_statistics(workdir, "e1", theta) == theta  # nothing kept yet
    save_statistics(workdir, "e1", SPEC, trained)
    merged = with_statistics(workdir, "e1", theta)
    for key in theta:
        expected = trained[key].numpy() if key in stats else theta[key]
        np.testing.assert_array_equal(merged[key], expected)
    assert with_statistics(workdir, "other", theta) == theta  # per experiment
    # the site's global model (evaluation, inference) carries the site's statistics
    meta = BundleMeta(spec_hash=SPEC.spec_hash(), round=1)
    weights = tmp_path / "global.safetensors"
    weights.write_bytes(encode_bundle(theta, meta))
    model, _ = load_model(workdir, "global", experiment_id="e1", weights=weights, spec=SPEC)
    state = model.state_dict()
    key = next(k for k in stats if k.endswith("running_var"))
    np.testing.assert_array_equal(state[key].numpy(), trained[key].numpy())
    weight = next(k for k in theta if k not in stats and theta[k].dtype.kind == "f")
    np.testing.assert_array_equal(state[weight].numpy(), theta[weight])
