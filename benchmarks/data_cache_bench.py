"""Data loading of one ACDC hospital's training split: no cache vs the site data cache (issue 19).

``python -m benchmarks.data_cache_bench`` prints the seconds of ``load_split`` without a cache,
with a fresh ``SiteDataCache`` (a miss that also writes the disk tier), three memory hits
(other seeds, as later rounds) and two disk hits (new cache objects on the same folder, as a
restarted agent), and the ratios.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.acdc_common import ACDC_SPEC, acdc_sites, fresh_dir, parse_args

NAME = "data_cache_bench"


def main(argv: list[str] | None = None) -> None:
    from data_specs.constants import SplitName
    from data_specs.manifests.manifest import load_manifest
    from site_agent.training.data_cache import SiteDataCache
    from site_agent.training.datasets import load_split

    args = parse_args(NAME, __doc__, argv)
    work = fresh_dir(args.work_dir)
    sites = acdc_sites(args.acdc_dir, work / "manifests", seed=args.seed, val_frac=0.2)
    name, path = next(iter(sites.by_name().items()))
    manifest = load_manifest(path)

    def timed(cache: SiteDataCache | None, seed: int) -> float:
        start = time.perf_counter()
        load_split(
            manifest,
            ACDC_SPEC,
            SplitName.TRAINING,
            train=True,
            seed=seed,
            fit="random",
            cache=cache,
        )
        return time.perf_counter() - start

    folder: Path = work / "cache"
    cold = timed(None, 1)
    cache = SiteDataCache(folder)
    miss = timed(cache, 1)
    memory = [timed(cache, s) for s in (2, 3, 4)]
    disk = [timed(SiteDataCache(folder), s) for s in (5, 6)]
    print(f"hospital {name}: no cache {cold:.3f} s; first with the cache (miss) {miss:.3f} s")
    print("memory hits " + ", ".join(f"{m:.4f} s" for m in memory))
    print("disk hits " + ", ".join(f"{d:.4f} s" for d in disk))
    print(
        f"no cache / median memory hit: {cold / statistics.median(memory):.0f}x; "
        f"/ median disk hit: {cold / statistics.median(disk):.0f}x"
    )


if __name__ == "__main__":
    main()
