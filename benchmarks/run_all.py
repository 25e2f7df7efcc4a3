"""Run every benchmark in turn (``make bench``); each writes benchmarks/results/<name>.md."""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = [
    "benchmarks.aggregator_bench",
    "benchmarks.strategies_bench",
    "benchmarks.site_agent_bench",
    "benchmarks.noniid_bench",
    "benchmarks.round_overhead_bench",
    "benchmarks.inside_bench",
    "benchmarks.outside_bench",
    "benchmarks.compression_bench",
]


def main() -> int:
    """Run each benchmark module as its own process; report which failed."""
    failed: list[str] = []
    for module in BENCHMARKS:
        start = time.monotonic()
        print(f"== {module}", flush=True)
        rc = subprocess.call([sys.executable, "-m", module, *sys.argv[1:]])
        print(f"== {module}: exit {rc} after {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(module)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
