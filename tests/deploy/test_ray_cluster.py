"""``fedseg simulate --backend ray --address …`` on a two-node Ray cluster started on this machine.

``ray start --head`` and a second ``ray start --address`` (1 CPU each, their own temp dirs and
ports); two sites of 1 CPU each must land on different nodes. The experiment's global models are
the in-process backend's, bit for bit. Skips loudly without Ray, or when the nodes cannot start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from data_specs.sources.synth import synthesize
from data_specs.task_spec import TaskSpec
from deploy.launcher.simulation import SimulationConfig, SimulationResult, run_simulation

try:
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(
        "RAY CLUSTER TESTS SKIPPED: ray is not installed (make test-ray installs fedseg[ray])",
        allow_module_level=True,
    )

from tests.deploy.ray_cluster import ENV, ClusterDidNotStart, two_node_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
ROOT = Path(__file__).resolve().parents[2]
TINY = TaskSpec(out_channels=4, channels=(4, 8), strides=(2,), patch_size=(32, 32))


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The GCS address of a fresh two-node cluster (a loud skip if it cannot start)."""
    if ray.is_initialized():  # another module's embedded Ray
        ray.shutdown()
    for name, value in ENV.items():  # this process is the cluster's driver
        monkeypatch.setenv(name, value)
    try:
        with two_node_cluster(tmp_path) as address:
            yield address
    except ClusterDidNotStart as exc:
        pytest.skip(f"RAY CLUSTER TEST SKIPPED: the two Ray nodes did not start: {exc}")
    finally:
        if ray.is_initialized():
            ray.shutdown()


def _config(tmp_path: Path, name: str, manifests: list[Path]) -> SimulationConfig:
    return SimulationConfig(
        manifests=manifests,
        out_dir=tmp_path / name,
        spec=TINY,
        partition="iid",
        num_sites=2,
        rounds=2,
        max_steps=2,
        batch_size=2,
        seed=5,
        evaluate=False,
    )


def _models(result: SimulationResult) -> list[str | None]:
    return [r["model_sha256"] for r in result.rounds if r["status"] == "closed"]


# The cluster's driver is a fresh interpreter, as ``fedseg simulate`` is: in a process that
# already ran an embedded Ray session, Ray 2.60 destroyed the actors of a later cluster
# connection as soon as they were registered ("The actor never ran").
_DRIVER = """
import io, json, sys
from pathlib import Path
from rich.console import Console
from deploy.launcher.ray_backend import RayOptions
from deploy.launcher.simulation import run_simulation
from tests.deploy.test_ray_cluster import _config, _models
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])  # as the test's process, whose models are the reference
cfg = _config(Path(args["tmp"]), "cluster", [Path(m) for m in args["manifests"]])
cfg.backend, cfg.ray = "ray", RayOptions(
    address=args["address"], cpus_per_site=1, torch_threads=args["threads"]
)
text = io.StringIO()
result = run_simulation(cfg, Console(file=text, width=200))
print(json.dumps({"console": text.getvalue(), "status": result.status, "models": _models(result)}))
"""


def test_two_node_cluster_runs_one_site_per_node_with_the_in_process_models(
    tmp_path: Path, cluster: str
) -> None:
    manifests = synthesize(tmp_path / "data", sites=2, cases=6, dims=2, seed=3)
    reference = run_simulation(_config(tmp_path, "inprocess", manifests))
    args = {
        "tmp": str(tmp_path),
        "manifests": [str(m) for m in manifests],
        "address": cluster,
        "threads": torch.get_num_threads(),  # the float sums of the reference run
    }
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(args)],
        cwd=ROOT,
        env={**os.environ, **ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    on_cluster = json.loads(done.stdout.strip().splitlines()[-1])
    assert "2 virtual sites on 2 Ray node(s)" in on_cluster["console"]
    assert reference.status == on_cluster["status"] == "completed"
    assert len(_models(reference)) == 2 and None not in _models(reference)
    assert on_cluster["models"] == _models(reference)
