"""CPU seconds of a round's aggregation against the number of updates (the close side of a round).

``python -m benchmarks.scale_aggregate_bench [--sites 10 100 1000]`` prints a markdown table.

For each N: N stored update bundles of the scale benchmark's tiny U-Net (``TINY_SPEC``, numpy
initial weights moved by seeded noise) are aggregated with FedAvg by the aggregator's own
``aggregate_round`` (blob re-hash, memory-mapped readers, safeguards, streaming mean, the new
global stored), timed with ``time.process_time`` (CPU seconds of this process: independent of
other load) and by peak RSS growth (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from aggregator.open_files import raise_open_files_limit
from aggregator.rounds.aggregation import UpdateInput, aggregate_round
from aggregator.storage.blobs import BlobStore
from aggregator.storage.global_models import build_initial_weights
from data_specs.constants import BundleKind
from data_specs.weights.bundle import BundleMeta, encode_bundle
from tests.aggregator.helpers import TINY_SPEC, plausible_weights


def measure(n: int, root: Path) -> tuple[float, float, float]:
    """(CPU seconds to aggregate, wall seconds, peak RSS growth MiB) for ``n`` updates."""
    blobs = BlobStore(root)
    theta = build_initial_weights(TINY_SPEC, seed=1)
    meta = BundleMeta(spec_hash="bench", round=1, kind=BundleKind.FULL, num_samples=10)
    global_ref = blobs.put_bytes(encode_bundle(theta, meta))
    updates = [
        UpdateInput(
            f"s{i:04d}",
            10,
            blobs.put_bytes(
                encode_bundle(plausible_weights(theta, site=f"s{i}", round_number=1), meta)
            ).sha256,
        )
        for i in range(n)
    ]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, wall0 = time.process_time(), time.perf_counter()
    aggregate_round(
        blobs,
        spec_hash="bench",
        round_number=1,
        strategy_name="fedavg",
        strategy_params={},
        global_sha256=global_ref.sha256,
        state_sha256=None,
        updates=updates,
        local_keys=frozenset(),
    )
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return cpu, wall, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args(argv)
    raise_open_files_limit()  # as `aggregator serve` does: a descriptor per mapped update
    print("| updates | aggregate CPU s | wall s | peak RSS growth MiB |")
    print("|---|---|---|---|")
    for n in args.sites:
        root = Path(tempfile.mkdtemp(prefix="fedseg_agg_bench_"))
        try:
            cpu, wall, rss = measure(n, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(f"| {n} | {cpu:.3f} | {wall:.2f} | {rss:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
