"""``fedseg simulate --backend ray``: every virtual site is a Ray actor running the same ``SiteAgent``.

The aggregator app runs in this (the driver's) process behind a real uvicorn server, and each
actor holds one ``SiteAgent`` speaking HTTP to it, as a hospital's agent does. Locally Ray is
embedded (``ray.init()`` starts it); ``--address auto`` joins a cluster started with ``ray start``
and ``ray://host:10001`` connects through Ray Client. On a cluster the aggregator listens on this
node's address so that actors on other nodes reach it; every node needs fedseg installed and the
manifests' files at the same paths.

The driver steps all actors together (each long-polls once, and those given a task train in
parallel) until the experiment ends, so the outcome depends only on the tasks and seeds, as in
the in-process backend: the global models are the same bits.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deploy.launcher.processes import LaunchError


@dataclass(frozen=True)
class RayOptions:
    """Where and how big each virtual site's actor runs.

    Args:
        address: ``None`` (an embedded local Ray), ``"auto"`` (the cluster this node joined with
            ``ray start``) or ``"ray://head:10001"`` (Ray Client). Default None.
        cpus_per_site: CPUs Ray reserves per site actor. Default 1.
        gpus_per_site: GPUs (fractions allowed) per site actor. Default 0.
        torch_threads: torch intra-op threads in each actor. Default None (the driver's count,
            so that float sums run as in the in-process backend).
    """

    address: str | None = None
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    torch_threads: int | None = None


class SiteActor:
    """One virtual site: a ``SiteAgent`` that enrolls on creation and handles one task a step."""

    def __init__(self, settings: Any, torch_threads: int) -> None:
        import torch

        from site_agent.federation.loop import SiteAgent

        torch.set_num_threads(torch_threads)
        self.agent = SiteAgent(settings)
        self.agent.prepare()

    def ready(self) -> str:
        """This actor's Ray node id, once enrolled (the driver waits for every actor's answer)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def step(self, wait_s: int) -> bool:
        """Poll once (long poll ``wait_s``) and run the task that comes; True if there was one."""
        return self.agent.step(wait_s=wait_s) is not None

    def close(self) -> None:
        self.agent.close()


def import_ray() -> Any:
    """``ray``, or a LaunchError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise LaunchError("the ray backend needs Ray: pip install 'fedseg[ray]'") from exc
    return ray


_started_for: list[str | None] = []  # the address start_ray last connected this process to


def start_ray(options: RayOptions) -> Any:
    """Connect to (or start) Ray; returns the module.

    A Ray this process is already connected to is used as it is, unless ``start_ray`` itself
    connected it to another address than ``options.address`` (for instance an embedded Ray of an
    earlier simulation, and now a cluster's): that is refused rather than run silently on the
    wrong Ray.

    Raises:
        LaunchError: Ray does not start or cannot be reached, or this process is connected to
            another Ray than ``options.address``.
    """
    ray = import_ray()
    if ray.is_initialized():
        if _started_for and _started_for[-1] != options.address:
            where = _started_for[-1] or "an embedded local Ray"
            raise LaunchError(
                f"Ray in this process is already connected to {where}, not to "
                f"{options.address or 'an embedded local Ray'}: run this simulation in a "
                "process of its own (`fedseg simulate`)"
            )
        return ray
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if options.address is not None:
        kwargs = {"address": options.address, "log_to_driver": False}
    try:
        ray.init(**kwargs)
    except Exception as exc:  # Ray raises a bare Exception when its node does not start
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[0] if lines else type(exc).__name__
        raise LaunchError(f"cannot reach Ray at {options.address or 'local'}: {detail}") from exc
    _started_for[:] = [options.address]
    return ray


def aggregator_host(options: RayOptions) -> str:
    """Loopback for an embedded Ray; this node's address when actors may run elsewhere."""
    if options.address is None:
        return "127.0.0.1"
    ray = import_ray()
    return str(ray.util.get_node_ip_address())


@contextlib.contextmanager
def served(app: Any, host: str) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sock.close()
            raise LaunchError("the simulation's aggregator did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class RaySites:
    """The virtual sites as Ray actors.

    ``nodes`` holds the Ray node id each actor runs on (in the order of ``settings``).

    Args:
        settings: one ``SiteSettings`` per site (aggregator URL, manifest, work dir, token).
        options: Ray placement options.
    """

    def __init__(self, settings: list[Any], options: RayOptions) -> None:
        import torch

        ray = start_ray(options)
        self._ray = ray
        remote = ray.remote(num_cpus=options.cpus_per_site, num_gpus=options.gpus_per_site)
        threads = options.torch_threads or torch.get_num_threads()
        actor_class = remote(SiteActor)
        self.actors = [actor_class.remote(s, threads) for s in settings]
        # Every actor enrolled before the experiment, as in-process agents are.
        self.nodes = self._get([a.ready.remote() for a in self.actors])

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return list(self._ray.get(refs))
        except self._ray.exceptions.RayError as exc:  # an actor's error, raised on the driver
            cause = getattr(exc, "cause", None) or exc
            raise LaunchError(
                f"a virtual site failed on Ray: {type(cause).__name__}: {cause}"
            ) from exc

    def step_all(self, wait_s: int = 1) -> bool:
        """Every site polls once and runs what it gets, in parallel; True if any worked."""
        return any(self._get([a.step.remote(wait_s) for a in self.actors]))

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        self.actors = []
