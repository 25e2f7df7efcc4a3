"""The aggregator's open-file limit: one descriptor per waiting site and per update aggregated.

A round of N sites holds N long-poll connections and, while it aggregates, N memory-mapped
update files (each mapping keeps a descriptor). The soft limit many service managers give
(systemd: 1,024) stops a 1,000-site round with ``Too many open files``; the hard limit is
usually far higher, and a process may raise its own soft limit up to it, as ``serve`` does at
start-up.
"""

from __future__ import annotations

import logging

from aggregator.logs import log_event

log = logging.getLogger("aggregator.open_files")

# Beyond this a soft limit buys nothing (Linux's default fs.nr_open is 1,048,576).
_CEILING = 1 << 20
# Below this a round of about half as many sites can fail while it aggregates.
COMFORTABLE = 8192


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (at most 1,048,576).

    Returns:
        The soft limit before and after. Both are the same where the platform has no
        ``resource`` module or refuses the change (a warning is logged then).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else min(hard, _CEILING)
    new = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (ValueError, OSError) as exc:
            log_event(log, "open_files.raise_failed", level=logging.WARNING, soft=soft, error=exc)
    if new != resource.RLIM_INFINITY and new < COMFORTABLE:
        log_event(
            log,
            "open_files.low_limit",
            level=logging.WARNING,
            limit=new,
            advice="rounds of more than about limit/2 sites can fail: raise LimitNOFILE or ulimit -n",
        )
    return soft, new
