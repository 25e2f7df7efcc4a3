"""How many compute threads the site agent's torch uses: the CPUs this process may run on.

torch sizes its thread pool from the machine's cores, not from what the process is allowed:
in a container limited to one CPU (cgroup ``cpu.max``) or pinned to two cores (affinity) it
still starts one OpenMP thread per host core, and the threads oversubscribe and spin. The agent
picks ``min(affinity, cgroup quota)`` instead; ``FEDSEG_SITE_THREADS`` overrides it, and so does
an ``OMP_NUM_THREADS`` set by the operator (when ``FEDSEG_SITE_THREADS`` is not).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from site_agent.errors import SiteSettingsError

log = logging.getLogger(__name__)

THREADS_ENV = "FEDSEG_SITE_THREADS"
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none)."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is not None:
        return max(1, len(getter(0)))
    return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in CPUs (``cpu.max`` of cgroup v2, ``cfs_quota_us`` of v1).

    Args:
        root: the cgroup mount. Default ``/sys/fs/cgroup``.

    Returns:
        ``quota / period`` (e.g. 1.5), or None when unlimited or unreadable.
    """
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def pick_threads(
    env: Mapping[str, str] | None = None, *, cgroup_root: Path = _CGROUP_ROOT
) -> tuple[int, str]:
    """The torch thread count for the agent, and where it came from.

    Args:
        env: environment to read ``FEDSEG_SITE_THREADS`` from. Default ``os.environ``.
        cgroup_root: the cgroup mount. Default ``/sys/fs/cgroup``.

    Returns:
        ``(threads, source)``; source is ``FEDSEG_SITE_THREADS``, ``OMP_NUM_THREADS``,
        ``cgroup quota`` or ``affinity``.

    Raises:
        SiteSettingsError: ``FEDSEG_SITE_THREADS`` is not a whole number from 1 to 1024.
    """
    env = os.environ if env is None else env
    raw = env.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= 1024:
            raise SiteSettingsError(
                f"{THREADS_ENV} must be a whole number from 1 to 1024, got {raw[:20]!r}"
            )
        return int(raw), THREADS_ENV
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None and math.ceil(quota) < cpus:
        return max(1, math.ceil(quota)), "cgroup quota"
    return cpus, "affinity"


def apply_site_threads(env: Mapping[str, str] | None = None) -> int:
    """Set torch's intra-op threads as ``pick_threads`` says; returns the count.

    Before torch is imported this only sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
    (torch sizes its pool from them when it loads), so the agent can enroll and start polling
    without waiting for torch; afterwards it calls ``torch.set_num_threads``.

    Raises:
        SiteSettingsError: a bad ``FEDSEG_SITE_THREADS``.
    """
    threads, source = pick_threads(env)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    log.info("torch uses %d thread(s) (%s)", threads, source)
    return threads
