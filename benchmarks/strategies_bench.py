"""Throughput of the aggregation strategies: GB/s of update bytes for K sites of a U-Net-sized model.

Run ``python -m benchmarks.strategies_bench [--sites 64] [--params 1200000] [--repeats 5]``;
prints one line per strategy and path (in-memory ``aggregate`` and ``aggregate_streaming``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aggregator.strategies import ClientUpdate, MappingReader, aggregate_streaming, build_strategy

# Channel pairs of a small 3-D U-Net (conv 3x3x3 + bias + 4 norm vectors per layer).
_CHANNELS = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
_CHANNELS += [(192, 64), (64, 64), (96, 32), (32, 32), (48, 16), (16, 16), (16, 2)]


def unet_shapes(target_params: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a U-Net-like state dict scaled to about ``target_params`` parameters."""
    base = sum(b * a * 27 + 5 * b for a, b in _CHANNELS)
    scale = (target_params / base) ** 0.5
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (a, b) in enumerate(_CHANNELS):
        a = max(1, round(a * scale)) if i else 1
        b = max(2, round(b * scale))
        shapes[f"layer{i}.conv.weight"] = (b, a, 3, 3, 3)
        shapes[f"layer{i}.conv.bias"] = (b,)
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"layer{i}.norm.{part}"] = (b,)
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=64)
    parser.add_argument("--params", type=int, default=1_200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--strategies", default="fedavg,fedavgm,fedadam,fedyogi,median,trimmed_mean"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = unet_shapes(args.params)
    theta = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    updates = [
        ClientUpdate(
            f"site-{i:03d}",
            int(rng.integers(10, 200)),
            {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
        )
        for i in range(args.sites)
    ]
    n_params = sum(v.size for v in theta.values())
    nbytes = sum(v.nbytes for u in updates for v in u.tensors.values())
    print(
        f"{args.sites} sites x {n_params:,} parameters ({len(shapes)} keys), {nbytes / 1e6:.0f} MB"
    )
    for name in args.strategies.split(","):
        strategy = build_strategy(name, {})
        for path in ("aggregate", "streaming"):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                if path == "aggregate":
                    strategy.aggregate(theta, updates, {}, frozenset())
                else:
                    readers = [MappingReader(u) for u in updates]
                    aggregate_streaming(strategy, theta, readers, {}, frozenset())
                times.append(time.perf_counter() - start)
            best = min(times)
            print(f"{name:>13} {path:>10}: {best * 1e3:7.1f} ms  {nbytes / best / 1e9:6.2f} GB/s")


if __name__ == "__main__":
    main()
