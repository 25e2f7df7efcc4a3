"""A local federation of processes over loopback, and the per-round timeline its rounds API gives.

``run_federation`` starts one agent process per site (their command lines chosen by the
caller: ``fedseg site run`` or the sleep agent) and ``fedseg aggregator serve`` together; once
the aggregator is healthy it registers the sites and hands each agent its enrollment token on
standard input, runs one experiment and returns the rounds API's answer with the launch
instants.
``analyse`` turns it into per-round figures: the cycle (close to close), the slowest site's
train + validate, the overhead outside it, the close latency and every site's phases.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.researcher.rounds import RoundPublic
    from deploy.launcher.processes import ManagedProcess

AgentCommand = Callable[[str, str, Path], tuple[list[str], dict[str, str]]]
"""``(site name, enrollment token, work dir) -> (argv, extra environment)`` of one agent; the
token is ``"-"`` (read from standard input, where ``run_federation`` writes it once the site is
registered)."""


@dataclass
class FederationRun:
    """Launch instants (Unix time) and the rounds API's answer of one experiment."""

    t_launch: float
    t_healthy: float
    t_enrolled: float
    t_started: float
    t_finished: float
    rounds: list[RoundPublic]
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)
    """CPU seconds (user + system) each process had used at ``healthy``, ``enrolled``,
    ``started`` and ``finished``: a figure the machine's other load does not inflate."""


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

    byte_compile_project()  # before the clock starts, as the images do at build time
    _load_harness()  # the harness's own imports are not the federation's start-up
    t_launch = time.time()
    out: list[FederationRun] = []
    args = (work, names, agent, experiment, aggregator_env, timeout_s, t_launch)
    try:
        _run(*args, out)
    except subprocess.TimeoutExpired:  # a starved agent outlived the stop's grace: keep the run
        if not out:
            raise
    return out[0]


PROJECT_PACKAGES = (
    "aggregator",
    "site_agent",
    "data_specs",
    "deploy",
    "personalization",
    "benchmarks",
)


def _load_harness() -> None:
    """Import what ``_run`` uses (0.12 s of CPU that was counted in the start-up before)."""
    import httpx  # noqa: F401

    import deploy.console.researcher_client
    import deploy.launcher.local_aggregator
    import deploy.launcher.processes  # noqa: F401
    import site_agent.federation.enrollment  # noqa: F401


def byte_compile_project() -> None:
    """Write the bytecode of the project's packages, as ``deploy/Dockerfile`` does at build time.

    A source checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (this machine's environment)
    otherwise compiles every module of ours from source in every process it starts: tenths of a
    CPU second per start-up that no installed service pays.
    """
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in PROJECT_PACKAGES:
        if (root / package).is_dir():
            compileall.compile_dir(root / package, quiet=2, workers=1)


def _run(
    work: Path,
    names: list[str],
    agent: AgentCommand,
    experiment: Callable[[list[str]], ExperimentCreate],
    aggregator_env: dict[str, str] | None,
    timeout_s: float,
    t_launch: float,
    out: list[FederationRun],
) -> None:
    import httpx

    from deploy.console.researcher_client import ResearcherClient
    from deploy.launcher.local_aggregator import start_aggregator
    from deploy.launcher.processes import LaunchError, free_port, process_group
    from site_agent.federation.enrollment import STDIN_TOKEN

    with process_group(work / "logs") as group, httpx.Client(timeout=600) as http:
        # The agents start with the aggregator: each does its start-up work (imports, work dir)
        # and then waits for its enrollment token on standard input
        # (FEDSEG_SITE_ENROLLMENT_TOKEN=-), which it gets once its site is registered.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        agents: dict[str, ManagedProcess] = {}
        for name in names:
            argv, agent_env = agent(name, STDIN_TOKEN, work / "sites" / name)
            env = {"FEDSEG_SITE_AGGREGATOR_URL": url, **agent_env}
            agents[name] = group.start(name, argv, env=env, stdin_pipe=True)
        agg = start_aggregator(
            group,
            work / "aggregator",
            env=aggregator_env,
            log_level="WARNING",
            healthy_timeout_s=600,  # a loaded machine starts slowly
            port=port,
        )
        t_healthy = time.time()
        admin = agg.admin_token
        http.base_url = httpx.URL(url)
        cpu = {"healthy": _cpu_seconds(group.processes)}
        researcher = ResearcherClient(http)
        researcher.create_researcher(admin, "round-timeline-bench")
        ids: dict[str, str] = {}
        for name in names:
            reg = researcher.register_site(name)
            ids[name] = reg.id
            agents[name].send_line(reg.enrollment_token)
        # The researcher creates the experiment while the agents enroll; it starts once they have.
        exp = researcher.create_experiment(experiment(list(ids.values())))
        deadline = time.monotonic() + 300
        while {s.id for s in researcher.sites() if s.status == "enrolled"} < set(ids.values()):
            group.check_alive()
            if time.monotonic() > deadline:
                raise LaunchError("site agents did not enroll within 300 s (see the logs)")
            time.sleep(0.05)
        t_enrolled = time.time()
        cpu["enrolled"] = _cpu_seconds(group.processes)
        t_started = time.time()
        researcher.start(exp.id)
        cpu["started"] = _cpu_seconds(group.processes)
        # The CPU of the steady rounds (2 and later) starts when round 2 opens, in the
        # transaction that closes round 1 (current_round counts closed rounds): looked for
        # every 50 ms during round 1 only.
        give_up = time.monotonic() + timeout_s
        now = researcher.experiment(exp.id)
        while now.status == "running" and now.current_round < 1 and time.monotonic() < give_up:
            group.check_alive()
            time.sleep(0.05)
            now = researcher.experiment(exp.id)
        if now.current_round == 1:
            cpu["round 2"] = _cpu_seconds(group.processes)
        # Every poll is a request the aggregator serves beside the rounds (a researcher route:
        # about 5 % of its CPU when asked once a second): every 5 s until the last round is
        # open, then every 0.2 s, so that the end is seen soon (the CPU figures run to it; the
        # round figures come from the rounds' own timestamps, not from this loop).
        while now.status == "running" and time.monotonic() < give_up:
            group.check_alive()
            last = now.current_round >= now.config.rounds - 1  # the last round is open
            time.sleep(0.2 if last else 5.0)
            now = researcher.experiment(exp.id)
        final = researcher.wait_finished(exp.id, timeout_s=timeout_s, poll_s=0.2)
        t_finished = time.time()
        cpu["finished"] = _cpu_seconds(group.processes)
        group.check_alive(["aggregator"])
        if final.status != "completed":
            raise LaunchError(f"experiment {final.status}: {final.failure_reason}")
        rounds = researcher.rounds(exp.id)
        out.append(
            FederationRun(t_launch, t_healthy, t_enrolled, t_started, t_finished, rounds, cpu)
        )


def _cpu_seconds(processes: list[ManagedProcess]) -> dict[str, float]:
    """User + system CPU seconds of each live process (Linux ``/proc``; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for proc in processes:
        try:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[proc.name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


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
    from data_specs.researcher.rounds import SiteRoundPublic

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


def cpu_lines(run: FederationRun, rounds: int, *, sleeping: bool = True) -> str:
    """CPU seconds of the start-up and per round: figures the machine's load does not inflate.

    ``sleeping``: the sites' training is a sleep, so the steady rounds' CPU is the floor of the
    time between two trainings (with real training, most of it is the training).
    """
    cpu = run.cpu_s
    if not cpu.get("started") or not cpu.get("finished"):
        return "CPU seconds: not measured (no /proc)."
    agents = [n for n in cpu["started"] if n != "aggregator"]

    def agent_mean(moment: str) -> float:
        return statistics.fmean(cpu[moment].get(n, 0.0) for n in agents) if agents else 0.0

    agg_round = (cpu["finished"]["aggregator"] - cpu["started"]["aggregator"]) / rounds
    agent_round = (agent_mean("finished") - agent_mean("started")) / rounds
    steady = ""
    if cpu.get("round 2") and rounds > 1:
        agg_steady = (cpu["finished"]["aggregator"] - cpu["round 2"]["aggregator"]) / (rounds - 1)
        agent_steady = (agent_mean("finished") - agent_mean("round 2")) / (rounds - 1)
        together = agg_steady + len(agents) * agent_steady
        cores = os.cpu_count() or 1
        steady = (
            f" Rounds 2–{rounds} alone (from round 2's opening): aggregator {agg_steady:.3f}, "
            f"each agent {agent_steady:.3f}, all {len(agents) + 1} processes together "
            f"{together:.3f} CPU s per round"
        )
        steady += (
            f": on {cores} cores at least {together / cores:.3f} s of wall time, wherever in "
            "the round it falls (most of it between two trainings: the uploads, the "
            "aggregation, the next round's delivery and download)."
            if sleeping
            else " (training and validation included)."
        )
    return (
        f"fedseg CPU seconds (user + system), the contention-free cost: aggregator "
        f"{cpu['healthy'].get('aggregator', 0.0):.2f} when healthy, "
        f"{cpu['started']['aggregator']:.2f} when round 1 was started; each agent (mean) "
        f"{agent_mean('enrolled'):.2f} when all had enrolled, {agent_mean('started'):.2f} when "
        f"round 1 was started (including the background torch import after enrolling). Per "
        f"round (mean over the {rounds} rounds, agents' first torch import and, in round 1, "
        "this benchmark's status reads every 50 ms included): "
        f"aggregator {agg_round:.3f}, each agent {agent_round:.3f} (training included; a "
        "sleep costs none)." + steady
    )


class LoadSampler:
    """The 1-minute load average, sampled on a thread while a benchmark runs.

    Example::

        with LoadSampler() as load:
            ...
        print(load.summary())
    """

    def __init__(self, every_s: float = 10.0) -> None:
        import threading

        self.every_s = every_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="load-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        """``min / median / max`` of the samples, e.g. ``"2.1 / 15.3 / 19.0 (42 samples)"``."""
        if not self.samples:
            return "not sampled"
        s = self.samples
        return f"{min(s):.1f} / {statistics.median(s):.1f} / {max(s):.1f} ({len(s)} samples)"
