"""Long measurements (speed, memory, Dice) that write reports to benchmarks/results/; never in CI."""
