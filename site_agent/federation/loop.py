"""The site agent's client loop: start-up checks, enrollment, then poll → task → poll.

``SiteAgent`` is what ``fedseg site run`` and the demo launcher (in-process) use::

    agent = SiteAgent(SiteSettings.load(work_dir="w", manifest="site_1/dataset.json", ...))
    summary = agent.run(max_tasks=3)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from data_specs import startup_gc
from data_specs.wire import EnrollResponse, TaskAssignment
from site_agent.federation.client import AggregatorClient, make_http_client
from site_agent.federation.enrollment import enroll, ensure_token
from site_agent.federation.fingerprints import FingerprintSync
from site_agent.federation.prewarm import PREWARM_MODULES, finish_prewarm, start_prewarm
from site_agent.federation.retry import Backoff
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings

if TYPE_CHECKING:
    from site_agent.federation.task_runner import TaskOutcome, TaskRunner, TrainerFactory

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run of the loop did: one outcome per task handled, in order."""

    outcomes: list[TaskOutcome] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return len(self.outcomes)

    def count(self, outcome: TaskOutcome) -> int:
        return sum(o == outcome for o in self.outcomes)


class SiteAgent:
    """A hospital's agent: validates its data, enrolls, and works through the aggregator's tasks.

    Args:
        settings: validated site settings (aggregator URL, manifest, work dir, tokens).
        http: the HTTP client to the aggregator. Default None (``make_http_client``); tests pass
            FastAPI's ``TestClient`` or a client with recording hooks.
        trainer_factory: builds the trainer of a task. Default None (``ManifestTrainers`` over
            the settings' manifest).
        backoff: retry policy. Default from the settings' backoff bounds.
        stop_event: set it to stop the loop between polls (in-process launchers). Default None.
        validate: check the manifest against its files at start-up. Default True.
        prewarm: modules to import on a background thread while a fresh agent waits for its
            first task. Default ``PREWARM_MODULES`` (the task runner, MONAI and
            ``torch._dynamo``: what a first training imports); a trainer that needs less (a
            benchmark's fixed wait) passes less.
    """

    def __init__(
        self,
        settings: SiteSettings,
        *,
        http: httpx.Client | None = None,
        trainer_factory: TrainerFactory | None = None,
        backoff: Backoff | None = None,
        stop_event: threading.Event | None = None,
        validate: bool = True,
        prewarm: Sequence[str] = PREWARM_MODULES,
    ) -> None:
        self.settings = settings
        self.workdir = WorkDir(settings.work_dir)
        self._own_http = http is None
        self.http = http if http is not None else make_http_client(settings)
        self.client = AggregatorClient(
            self.http,
            backoff=backoff or Backoff.from_settings(settings),
        )
        self.stop_event = stop_event or threading.Event()
        self._validate = validate
        self._prewarm = tuple(prewarm)
        self._factory = trainer_factory
        self._prepared = False
        self._runner: TaskRunner | None = None
        self.fingerprints = FingerprintSync(settings.manifest, self.workdir, self.client)

    # -- start-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Start-up checks: the manifest validates, the work dir is writable, a token exists.

        Raises:
            ManifestRejectedError: the manifest fails validation (``report`` has the details).
            SiteSettingsError: neither a site token nor an enrollment token is available.
            EnrollmentError, AggregatorUnavailableError: enrollment failed.
        """
        if self._prepared:
            return
        if self._factory is None:
            from site_agent.training.datasets import ManifestTrainers, check_manifest

            manifest = self.settings.require_manifest()
            if self._validate:
                check_manifest(manifest)
            self._factory = ManifestTrainers(self.settings, self.workdir)
        self.workdir.ensure()
        if removed := self.workdir.remove_partial_files():
            log.info("removed %d partial file(s) left by an interrupted run", removed)
        ensure_token(self.client, self.settings, self.workdir)
        self.fingerprints.sync()  # for plan: auto; again whenever the manifest changes
        self._prepared = True
        # torch and MONAI are not imported before enrolling: a new site enrolls without waiting
        # for them; ``run`` then imports them in the background (site_agent.federation.prewarm).

    def enroll(self) -> EnrollResponse:
        """Enroll now with the configured enrollment token (see ``site_agent.federation.enrollment``)."""
        return enroll(self.client, self.settings, self.workdir)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, *, once: bool = False, max_tasks: int | None = None) -> RunSummary:
        """Resume any task in progress, then poll and handle tasks.

        Args:
            once: stop after one task. Default False.
            max_tasks: stop after this many tasks (a resumed one counts). Default None (until
                ``stop_event`` is set).

        Returns:
            The outcomes of the tasks handled.

        Raises:
            TokenRevokedError: 401, the token was revoked; the loop stops.
            AggregatorUnavailableError: the aggregator stayed unreachable through every retry.
            WorkDirError: the disk is full or the work dir unwritable.
        """
        self.prepare()
        startup_gc.resume()  # enrolled: the collector is back on, if the command paused it
        limit = 1 if once else max_tasks
        summary = RunSummary()
        runner: TaskRunner | None = None
        state = self.workdir.load_state()
        if removed := self.workdir.remove_finished_task_files(state):
            log.info("removed the large files of %d finished task(s)", removed)
        try:
            if state is not None:
                log.info("resuming task %s at phase %s", state.task.task_id, state.phase)
                runner = self._new_runner()
                summary.outcomes.append(runner.resume(state))
            elif self._prewarm:  # torch and MONAI load while the agent waits for its first task
                start_prewarm(*self._prewarm)
            while not self.stop_event.is_set() and (limit is None or summary.tasks < limit):
                task = self._poll()
                if task is None:
                    continue
                log.info(
                    "task %s: experiment %s round %d",
                    task.task_id,
                    task.experiment_id,
                    task.round,
                )
                runner = runner or self._new_runner()
                summary.outcomes.append(runner.start(task))
        finally:
            if runner is not None:  # the last task's global model is kept before returning
                runner.flush_kept()
        return summary

    def _new_runner(self) -> TaskRunner:
        finish_prewarm()  # before the task's own threads import any of the same modules
        from site_agent.federation.task_runner import TaskRunner

        return TaskRunner(self.settings, self.workdir, self.client, self._factory)  # type: ignore[arg-type]

    def step(self, *, wait_s: int = 0) -> TaskOutcome | None:
        """Handle at most one task: resume one in progress, or poll once and run what comes.

        In-process simulations drive several agents in turn with this instead of ``run``.

        Args:
            wait_s: long-poll seconds; 0 asks and returns at once. Default 0.

        Returns:
            The outcome of the task handled, or None when there was none.
        """
        self.prepare()
        if self._runner is None:
            self._runner = self._new_runner()
            state = self.workdir.load_state()
            if state is not None:
                return self._runner.resume(state)
        self.fingerprints.sync()
        task = self.client.next_task(wait_s)
        return None if task is None else self._runner.start(task)

    def _poll(self) -> TaskAssignment | None:
        self.fingerprints.sync()
        return self.client.next_task(self.settings.poll_wait_s)

    def close(self) -> None:
        """Keep the last task's global model (``step``), close the HTTP client if the agent made it."""
        try:
            if self._runner is not None:
                self._runner.flush_kept()
        finally:
            if self._own_http:
                self.http.close()

    def __enter__(self) -> SiteAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
