"""``fedseg simulate --backend ray``: the same SiteAgent code as Ray actors gives the same models.

Ray is an optional extra (``make test-ray`` installs it and runs this file); without it the
tests skip with a message saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_specs.sources.synth import synthesize
from data_specs.task_spec import TaskSpec
from deploy.cli import app
from deploy.launcher.ray_backend import RayOptions
from deploy.launcher.simulation import SimulationConfig, SimulationResult, run_simulation

try:
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(
        "RAY TESTS SKIPPED: ray is not installed (make test-ray installs fedseg[ray])",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes on a loaded machine
TINY = TaskSpec(out_channels=4, channels=(4, 8), strides=(2,), patch_size=(32, 32))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One embedded Ray for the module (starting Ray costs seconds)."""
    problem: Exception | None = None
    for _ in range(3):  # Ray waits a fixed 30 s for its raylet: a starved machine can miss it
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:  # ray raises a bare Exception on that timeout
            problem = exc
            ray.shutdown()
    else:
        pytest.skip(f"RAY TESTS SKIPPED: a local Ray did not start 3 times: {problem}")
    yield
    ray.shutdown()


def _config(tmp_path: Path, name: str, manifests: list[Path]) -> SimulationConfig:
    return SimulationConfig(
        manifests=manifests,
        out_dir=tmp_path / name,
        spec=TINY,
        partition="iid",
        num_sites=3,
        fraction=0.7,
        rounds=2,
        max_steps=2,
        batch_size=2,
        seed=4,
    )


def _models(result: SimulationResult) -> list[str | None]:
    return [r["model_sha256"] for r in result.rounds if r["status"] == "closed"]


def test_ray_actors_give_the_in_process_models_bit_for_bit(tmp_path: Path, local_ray: None) -> None:
    manifests = synthesize(tmp_path / "data", sites=2, cases=8, dims=2, seed=1)
    reference = run_simulation(_config(tmp_path, "inprocess", manifests))
    cfg = _config(tmp_path, "ray", manifests)
    cfg.backend, cfg.ray = "ray", RayOptions(cpus_per_site=0.5)
    on_ray = run_simulation(cfg)
    assert reference.status == on_ray.status == "completed"
    assert len(_models(reference)) == 2 and None not in _models(reference)
    assert _models(on_ray) == _models(reference)
    final = [(tmp_path / n / "global_final.safetensors").read_bytes() for n in ("inprocess", "ray")]
    assert hashlib.sha256(final[0]).digest() == hashlib.sha256(final[1]).digest()
    assert on_ray.final_dice.keys() == reference.final_dice.keys()


def test_cli_runs_the_ray_backend_and_refuses_an_address_without_it(
    tmp_path: Path, local_ray: None
) -> None:
    manifests = synthesize(tmp_path / "data", sites=2, cases=6, dims=2, seed=2)
    runner = CliRunner()
    base = ["simulate", *map(str, manifests), "--rounds", "1", "--patch", "32"]
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--address", "auto"])
    assert refused.exit_code == 1 and "--address needs --backend ray" in refused.output
    ran = runner.invoke(
        app, [*base, "--out", str(tmp_path / "b"), "--backend", "ray", "--cpus-per-site", "0.5"]
    )
    assert ran.exit_code == 0, ran.output
    assert "\ncompleted in " in ran.output  # after the round progress lines
    assert "site_0: global Dice" in ran.output and "site_1: global Dice" in ran.output
    assert "2 virtual sites on 1 Ray node(s)" in ran.output
