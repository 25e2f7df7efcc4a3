"""``fedseg simulate``: the Ray backend against the in-process backend, same experiment and seed.

``python -m benchmarks.ray_bench [--sites 3] [--rounds 3] [--local-epochs 1] [--max-steps 20] [--size 64]`` writes
``benchmarks/results/ray.md``.

Both backends run one FedAvg experiment on synthetic 2D data (``data_specs.sources.synth``). Measured
for each: the wall time of ``run_simulation`` (Ray's start-up included: a local Ray is started
inside the timed call), the CPU seconds of this process and every process below it (Ray's
raylet, GCS and worker processes included; sampled from ``/proc`` twice a second, so a process
that lives under half a second is missed), and whether the rounds' global models are the same
bits. The wall-time goal (Ray within 10 % of in-process) is only meaningful on an idle machine:
the report states the load average seen.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "ray.md"
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


class TreeCpu:
    """CPU seconds of this process and all its descendants, sampled from /proc."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.root = os.getpid()
        self.seen: dict[int, float] = {}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p))}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                self.seen[pid] = max(self.seen.get(pid, 0.0), stats[pid][1])
            todo.extend(children.get(pid, []))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    @contextmanager
    def measuring(self) -> Iterator[TreeCpu]:
        self.sample()
        start = dict(self.seen)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.sample()
            self.seen = {p: c - start.get(p, 0.0) for p, c in self.seen.items()}

    @property
    def total(self) -> float:
        return sum(self.seen.values())


def run(backend: str, args: argparse.Namespace, manifests: list[Path]) -> dict[str, object]:
    from data_specs.task_spec import TaskSpec
    from deploy.launcher.ray_backend import RayOptions
    from deploy.launcher.simulation import SimulationConfig, run_simulation

    cfg = SimulationConfig(
        manifests=manifests,
        out_dir=args.work_dir / backend,
        spec=TaskSpec(
            out_channels=4, channels=(8, 16, 32), strides=(2, 2), patch_size=(args.size,) * 2
        ),
        partition="iid",
        num_sites=args.sites,
        rounds=args.rounds,
        max_steps=args.max_steps,
        local_epochs=args.local_epochs,
        batch_size=4,
        seed=7,
        evaluate=False,
        backend=backend,
        ray=RayOptions(cpus_per_site=args.cpus_per_site) if backend == "ray" else None,
    )
    cpu = TreeCpu()
    t0 = time.monotonic()
    with cpu.measuring():
        ray_up = 0.0
        if backend == "ray":  # timed apart: run_simulation then finds Ray started
            from deploy.launcher.ray_backend import start_ray

            start_ray(cfg.ray or RayOptions())
            ray_up = time.monotonic() - t0
        result = run_simulation(cfg)
        if backend == "ray":
            import ray

            ray.shutdown()
    wall = time.monotonic() - t0
    closed = [r for r in result.rounds if r["status"] == "closed"]
    models = [r["model_sha256"] for r in closed]
    rounds_s = 0.0
    if closed:  # the first round's opening to the last one's close: the federated part
        rounds_s = _stamp(closed[-1]["closed_at"]) - _stamp(closed[0]["opened_at"])
    return {
        "backend": backend,
        "status": result.status,
        "wall": wall,
        "ray_up": ray_up,
        "rounds": rounds_s,
        "cpu": cpu.total,
        "models": models,
    }


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    # A cap: each site has `--cases` cases, so an epoch is cases / 4 steps (2 by default).
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cpus-per-site", type=float, default=0.5)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fedseg_ray_bench"))
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    import shutil

    from data_specs.sources.synth import synthesize

    shutil.rmtree(args.work_dir, ignore_errors=True)
    manifests = synthesize(
        args.work_dir / "data", sites=args.sites, cases=args.cases, dims=2, size=args.size, seed=1
    )
    # A warm driver for both backends: torch and MONAI imported before either is timed (the
    # in-process backend would otherwise pay this process's imports inside its timed run, while
    # every Ray actor pays its own, ~5 CPU s each on this machine, inside Ray's).
    import monai  # noqa: F401
    import torch  # noqa: F401

    load_before = os.getloadavg()
    rows = [run(backend, args, manifests) for backend in ("inprocess", "ray")]
    load_after = os.getloadavg()
    same = rows[0]["models"] == rows[1]["models"] and rows[0]["status"] == "completed"
    base_wall, base_cpu = float(rows[0]["wall"]), float(rows[0]["cpu"])  # type: ignore[arg-type]
    command = "python -m benchmarks.ray_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Ray simulation backend against the in-process backend",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()} Linux, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
        f"- Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}"
        " (wall times are only comparable on an idle machine)",
        f"- Command: `{command}`",
        f"- Experiment: FedAvg, {args.sites} iid sites of {args.cases} cases, {args.rounds} rounds, "
        f"{args.local_epochs} local epochs (batch 4) capped at {args.max_steps} steps, "
        f"{args.size}x{args.size} synthetic 2D, Ray {args.cpus_per_site} CPU per site",
        f"- Global models of every round the same bits on both backends: **{same}**",
        "",
        "Columns: wall = the whole `run_simulation` call (Ray's start-up included); Ray up = "
        "`ray.init` alone; set-up = wall minus Ray up minus rounds (the aggregator, partitions, "
        "the sites' processes and imports, enrolment, and the end); rounds = the first round's "
        "`opened_at` to the last round's `closed_at`; CPU = this process and every process below "
        "it.",
        "",
        "| backend | status | wall s | wall vs in-process | Ray up s | set-up s | rounds s "
        "| rounds vs in-process | CPU s (process tree) | CPU vs in-process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_rounds = float(rows[0]["rounds"]) or 1.0  # type: ignore[arg-type]
    for row in rows:
        wall, cpu = float(row["wall"]), float(row["cpu"])  # type: ignore[arg-type]
        ray_up, rounds = float(row["ray_up"]), float(row["rounds"])  # type: ignore[arg-type]
        lines.append(
            f"| {row['backend']} | {row['status']} | {wall:.1f} | {wall / base_wall - 1:+.0%} "
            f"| {ray_up:.1f} | {wall - ray_up - rounds:.1f} | {rounds:.1f} "
            f"| {rounds / base_rounds - 1:+.0%} | {cpu:.1f} | {cpu / base_cpu - 1:+.0%} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
