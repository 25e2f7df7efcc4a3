"""``serve`` raises its soft open-file limit: a round holds a descriptor per update it aggregates.

Each check runs in a fresh interpreter whose soft ``RLIMIT_NOFILE`` is set low first (this test
process keeps its own limit).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOFT = 128
UPDATES = 200  # more updates than the low soft limit has descriptors

AGGREGATE = f"""
import resource, sys, tempfile
from pathlib import Path
import numpy as np
from aggregator.rounds.aggregation import UpdateInput, aggregate_updates
from aggregator.storage.blobs import BlobStore
from aggregator.open_files import raise_open_files_limit
from aggregator.storage import bundle_views
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.constants import BundleKind

hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, ({SOFT}, hard))
if sys.argv[1] == "raise":
    print("limits", *raise_open_files_limit())
bundle_views.READ_WHOLE_BYTES = 0  # map every update, as rounds of large models do
blobs = BlobStore(Path(tempfile.mkdtemp()))
meta = BundleMeta(spec_hash="x", round=1, kind=BundleKind.FULL, num_samples=1)
theta = blobs.put_bytes(encode_bundle({{"w": np.zeros((8, 8), np.float32)}}, meta))
updates = [
    UpdateInput(f"s{{i:04d}}", 1, blobs.put_bytes(
        encode_bundle({{"w": np.full((8, 8), i, np.float32)}}, meta)).sha256)
    for i in range({UPDATES})
]
try:
    new, _ = aggregate_updates(blobs, strategy_name="fedavg", strategy_params={{}},
        global_sha256=theta.sha256, state_sha256=None, updates=updates, local_keys=frozenset())
except OSError as exc:
    print("failed", exc.errno)
else:
    print("mean", float(new["w"].mean()))
"""


def _run(mode: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", AGGREGATE, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.slow  # two fresh interpreters (2.4 s on an idle machine)
@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * UPDATES,
    reason="the hard open-file limit here is too low to raise the soft one above the test's needs",
)
def test_a_low_soft_limit_fails_a_big_round_and_serve_s_raise_lets_it_aggregate() -> None:
    assert _run("keep") == ["failed", "24"]  # EMFILE: Too many open files
    out = _run("raise")
    assert out[:2] == ["limits", str(SOFT)] and int(out[2]) >= 4 * UPDATES
    assert out[3] == "mean" and float(out[4]) == pytest.approx((UPDATES - 1) / 2)
