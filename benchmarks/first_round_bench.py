"""Round 1 of a hospital whose agent enrolled a while before the experiment started (issue 19).

``python -m benchmarks.first_round_bench [--idle-s 0 20] [--repeats 2]`` writes
``benchmarks/results/first_round.md`` (``--out``).

A hospital's IT starts ``fedseg site run`` once; the researcher starts an experiment later.
Meanwhile the agent imports what its first training needs on a background thread
(``site_agent.federation.prewarm``: torch, MONAI, ``torch._dynamo``). This benchmark measures
what round 1 costs afterwards: one ``fedseg aggregator serve`` and one ``fedseg site run``
process on a synthetic 2D hospital (8 cases, the demo's U-Net), the agent left idle for
``--idle-s`` seconds after enrolling, then a one-round experiment (one local epoch, Adam,
``min_sites`` 1). Each row gives the round's wall time (opened to closed, the aggregator's
clock) and the site's own timeline for it: loading the data and the model, training,
validation. ``--idle-s 0`` is the demo's case, where the experiment starts as soon as the
sites have enrolled and the imports cannot be done ahead.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.suite.store import commit
from data_specs.files import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def first_round(work: Path, idle_s: float) -> dict[str, Any]:
    """One fresh aggregator and site agent; the agent idles ``idle_s`` after enrolling; the
    experiment's single round is measured."""
    import httpx

    from data_specs.constants import OptimizerName
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.sources.synth import synthesize
    from data_specs.wire import TrainConfig
    from deploy.console.researcher_client import ResearcherClient
    from deploy.launcher.demo import SPEC, _start_sites, _wait_enrolled
    from deploy.launcher.local_aggregator import start_aggregator
    from deploy.launcher.processes import process_group

    manifests = synthesize(work / "data", sites=1, cases=8, dims=2, seed=0, outside=0)
    with process_group(work / "logs") as group, httpx.Client(timeout=60) as http:
        aggregator = start_aggregator(group, work / "aggregator")
        http.base_url = httpx.URL(aggregator.url)
        researcher = ResearcherClient(http)
        researcher.create_researcher(aggregator.admin_token, "bench")
        ids = _start_sites(group, researcher, manifests, aggregator.url, work)
        _wait_enrolled(researcher, list(ids.values()), group)
        time.sleep(idle_s)
        train = TrainConfig(local_epochs=1, batch_size=8, lr=3e-3, optimizer=OptimizerName.ADAM)
        experiment = researcher.create_experiment(
            ExperimentCreate(
                name="first-round",
                spec=SPEC,
                rounds=1,
                min_sites=1,
                sites=list(ids.values()),
                train=train,
                round_deadline_s=600,
            )
        )
        researcher.start(experiment.id)
        final = researcher.wait_finished(experiment.id, timeout_s=600, poll_s=0.2)
        if final.status != "completed":
            raise RuntimeError(f"experiment {final.status}: {final.failure_reason}")
        rnd = researcher.rounds(experiment.id)[0]
        if rnd.closed_at is None or not rnd.sites or rnd.sites[0].metrics is None:
            raise RuntimeError("round 1 closed without the site's metrics")
        timeline = rnd.sites[0].metrics.timeline
        if timeline is None:
            raise RuntimeError("the site reported no timeline")
        return {
            "idle_s": idle_s,
            "round_s": (rnd.closed_at - rnd.opened_at).total_seconds(),
            # the task's runner starts once the first task's imports are done (finish_prewarm)
            "before_s": None
            if timeline.received_at is None
            else timeline.received_at - rnd.opened_at.timestamp(),
            "load_s": timeline.load_s,
            "train_s": timeline.train_s,
            "validate_s": timeline.validate_s,
        }


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def report(rows: list[dict[str, Any]], command: str) -> str:
    """The markdown report of the runs, in the order they ran."""
    lines = [
        "# Round 1 after the agent waited: what the first training still imports",
        "",
        f"`{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()[:12]}, "
        f"{platform.node()}, {os.cpu_count()} CPUs).",
        "",
        "One aggregator and one site agent (synthetic 2D hospital, 8 cases, one local epoch);",
        "the agent idles the given seconds after enrolling before the experiment starts.",
        "",
        "Columns: the round's wall time (opened to closed, the aggregator's clock); from the",
        "round's opening until the agent's task runner took the task (delivery, and the wait for",
        "the first task's imports: torch, MONAI, `torch._dynamo`); then the site's own timeline.",
        "",
        "| agent idle before the experiment s | round 1 wall s | opened → task runner s "
        "| site load s | site train s | site validate s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['idle_s']:g} | {_fmt(row['round_s'])} | {_fmt(row['before_s'])} "
            f"| {_fmt(row['load_s'])} "
            f"| {_fmt(row['train_s'])} | {_fmt(row['validate_s'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-s", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "first_round.md")
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.repeats):
        for idle_s in args.idle_s:
            with tempfile.TemporaryDirectory(prefix="fedseg-first-round-") as work:
                row = first_round(Path(work), idle_s)
            print(row, flush=True)
            rows.append(row)
    idle = " ".join(f"{s:g}" for s in args.idle_s)
    command = f"python -m benchmarks.first_round_bench --idle-s {idle} --repeats {args.repeats}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, report(rows, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
