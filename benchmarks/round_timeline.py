"""A local federation of processes over loopback, and the per-round timeline its rounds API gives.

``run_federation`` starts ``fedseg aggregator serve`` and one agent process per site (their
command lines chosen by the caller: ``fedseg site run`` or the sleep agent), enrolls them,
runs one experiment and returns the rounds API's answer with the launch instants.
``analyse`` turns it into per-round figures: the cycle (close to close), the slowest site's
train + validate, the overhead outside it, the close latency and every site's phases.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aggregator.schemas.experiments import ExperimentCreate
    from aggregator.schemas.rounds import RoundPublic

AgentCommand = Callable[[str, str, Path], tuple[list[str], dict[str, str]]]
"""``(site name, enrollment token, work dir) -> (argv, extra environment)`` of one agent."""


@dataclass
class FederationRun:
    """Launch instants (Unix time) and the rounds API's answer of one experiment."""

    t_launch: float
    t_healthy: float
    t_enrolled: float
    t_started: float
    t_finished: float
    rounds: list[RoundPublic]


@dataclass
class SitePhases:
    """One site's round, in Unix seconds (start, end) per phase."""

    name: str
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    def seconds(self, phase: str) -> float:
        start, end = self.phases.get(phase, (0.0, 0.0))
        return end - start


@dataclass
class RoundFigures:
    """One closed round: timing on the aggregator's clock (Unix seconds) and each site's phases."""

    number: int
    opened: float
    closed: float
    previous_closed: float
    aggregating: float | None
    aggregate_s: float | None
    close_latency_s: float | None
    critical_s: float  # the slowest site's train + validate
    sites: list[SitePhases]

    @property
    def cycle_s(self) -> float:
        """Close of the previous round (round 1: its opening) to this round's close."""
        return self.closed - self.previous_closed

    @property
    def overhead_s(self) -> float:
        """Cycle time outside the slowest site's train + validate."""
        return self.cycle_s - self.critical_s

    @property
    def span_overhead_s(self) -> float:
        """Open-to-close time outside the slowest site's train + validate."""
        return self.closed - self.opened - self.critical_s

    def mean_phase(self, phase: str) -> float:
        return statistics.fmean(s.seconds(phase) for s in self.sites) if self.sites else 0.0

    def max_phase(self, phase: str) -> float:
        return max((s.seconds(phase) for s in self.sites), default=0.0)


def run_federation(
    work: Path,
    names: list[str],
    agent: AgentCommand,
    experiment: Callable[[list[str]], ExperimentCreate],
    *,
    aggregator_env: dict[str, str] | None = None,
    timeout_s: float = 3600.0,
) -> FederationRun:
    """Start the aggregator and one agent per name, run one experiment, return its rounds.

    Args:
        work: an empty folder for the aggregator's data, the agents' work dirs and the logs.
        names: site names.
        agent: the command line of one agent.
        experiment: the experiment to run, given the site ids.
        aggregator_env: extra environment of the aggregator. Default None.
        timeout_s: give up on the experiment after this long. Default 3600.

    Raises:
        LaunchError: a process died or the experiment did not complete.
    """
    import httpx

    from deploy.processes import LaunchError, fedseg_argv, free_port, process_group, wait_healthy
    from deploy.researcher_client import ResearcherClient

    admin = secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t_launch = time.time()
    with process_group(work / "logs") as group, httpx.Client(base_url=url, timeout=600) as http:
        env = {"FEDSEG_AGG_ADMIN_TOKEN": admin, "FEDSEG_AGG_LOG_LEVEL": "WARNING"}
        agg = group.start(
            "aggregator",
            fedseg_argv(
                "aggregator",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(work / "aggregator"),
            ),
            env={**env, **(aggregator_env or {})},
        )
        wait_healthy(f"{url}/healthz", agg, timeout_s=600)  # a loaded machine starts slowly
        t_healthy = time.time()
        researcher = ResearcherClient(http)
        researcher.create_researcher(admin, "round-timeline-bench")
        ids: dict[str, str] = {}
        for name in names:
            reg = researcher.register_site(name)
            ids[name] = reg.id
            argv, agent_env = agent(name, reg.enrollment_token, work / "sites" / name)
            group.start(name, argv, env={"FEDSEG_SITE_AGGREGATOR_URL": url, **agent_env})
        deadline = time.monotonic() + 300
        while {s.id for s in researcher.sites() if s.status == "enrolled"} < set(ids.values()):
            group.check_alive()
            if time.monotonic() > deadline:
                raise LaunchError("site agents did not enroll within 300 s (see the logs)")
            time.sleep(0.05)
        t_enrolled = time.time()
        exp = researcher.create_experiment(experiment(list(ids.values())))
        t_started = time.time()
        researcher.start(exp.id)
        final = researcher.wait_finished(exp.id, timeout_s=timeout_s, poll_s=0.2)
        t_finished = time.time()
        group.check_alive(["aggregator"])
        if final.status != "completed":
            raise LaunchError(f"experiment {final.status}: {final.failure_reason}")
        rounds = researcher.rounds(exp.id)
    return FederationRun(t_launch, t_healthy, t_enrolled, t_started, t_finished, rounds)


def analyse(run: FederationRun) -> list[RoundFigures]:
    """Per-round figures of the closed rounds, in order."""
    out: list[RoundFigures] = []
    previous: float | None = None
    for rnd in run.rounds:
        if rnd.status != "closed" or rnd.closed_at is None:
            continue
        opened, closed = rnd.opened_at.timestamp(), rnd.closed_at.timestamp()
        sites = [_site_phases(s) for s in rnd.sites if s.status == "accepted"]
        critical = max((s.seconds("train") + s.seconds("validate") for s in sites), default=0.0)
        tl = rnd.timeline
        out.append(
            RoundFigures(
                number=rnd.number,
                opened=opened,
                closed=closed,
                previous_closed=opened if previous is None else previous,
                aggregating=tl.aggregating_at.timestamp() if tl and tl.aggregating_at else None,
                aggregate_s=tl.aggregate_s if tl else None,
                close_latency_s=tl.close_latency_s if tl else None,
                critical_s=critical,
                sites=sites,
            )
        )
        previous = closed
    return out


def _site_phases(site: object) -> SitePhases:
    from aggregator.schemas.rounds import SiteRoundPublic

    assert isinstance(site, SiteRoundPublic)
    phases = SitePhases(site.site_name)
    metrics = site.metrics
    tl = metrics.timeline if metrics else None
    if tl is None or tl.received_at is None:
        if metrics and metrics.train_seconds is not None:  # an agent without timelines
            phases.phases["train"] = (0.0, metrics.train_seconds)
        return phases
    t = tl.received_at
    if tl.download_s is not None:
        phases.phases["download"] = (t, t + tl.download_s)
        t += tl.download_s
    if tl.load_s is not None:  # with the download (a new task) or after it (a resumed one)
        start = tl.load_at if tl.load_at is not None else t
        phases.phases["load"] = (start, start + tl.load_s)
        t = max(t, start + tl.load_s)
    t = tl.train_at if tl.train_at is not None else t
    for name, seconds in (
        ("train", tl.train_s),
        ("validate", tl.validate_s),
        ("encode", tl.encode_s),
    ):
        if seconds is not None:
            phases.phases[name] = (t, t + seconds)
            t += seconds
    if tl.upload_at is not None and site.reported_at is not None:
        phases.phases["upload"] = (tl.upload_at, site.reported_at.timestamp())
    if tl.poll_wait_s is not None:
        phases.phases["wait"] = (tl.received_at - tl.poll_wait_s, tl.received_at)
    return phases


def startup_s(run: FederationRun, figures: list[RoundFigures]) -> float:
    """Launch of the aggregator process to the opening of round 1."""
    return figures[0].opened - run.t_launch if figures else float("nan")
