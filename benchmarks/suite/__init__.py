"""The accumulating benchmark suite: ACDC runs stored one JSON file each, reports built from all.

``python -m benchmarks.suite run`` executes the runs that are missing from
``benchmarks/results/runs/`` (one file per table, method, seed and configuration hash, with the
commit that produced it), then ``python -m benchmarks.suite report`` assembles the reports from
every stored run: mean ± sd over seeds, per-hospital paired differences with bootstrap
confidence intervals, and learning curves. Budgets are fixed in rounds (epochs), never in
seconds, so a busy machine changes the time a run takes but not its result.
"""
