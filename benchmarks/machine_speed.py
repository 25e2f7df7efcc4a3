"""How fast this machine is right now: two fixed CPU measurements a timing report prints.

The shared 2-core virtual machine's speed drifts: on 2026-11-30 the same code took 9–13 s per
1,000-site round instead of 3.6–4.8 s a few hours before (``benchmarks/results/scale.md``,
section O). The slowdown does not show as steal time: a process's CPU seconds grow with it,
so they are not load-independent there. CPU seconds in two reports compare only when these
figures agree. Each is the mean over about a second of work, which is what a benchmark
gets, with the best repeat beside it, which is what the machine can do.

Example::

    before = measure()
    ...  # the benchmark
    print(speed_line(before, measure()))
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Speed:
    """One measurement: microseconds for ``sum(range(50))`` (lower is faster),
    ``hashlib.sha256`` in MB/s (higher is faster) and microseconds for a one-byte ping over a
    ``socketpair`` (two system calls; lower is faster), each the mean and the best repeat."""

    python_loop_us: float
    python_loop_best_us: float
    sha256_mb_s: float
    sha256_best_mb_s: float
    ping_us: float = math.nan
    ping_best_us: float = math.nan


def measure(
    *, loops: int = 50_000, repeats: int = 10, hash_mib: int = 8, pings: int = 5_000
) -> Speed:
    """Time a pure-Python loop, sha256 (the round's own hash) and system calls, ``repeats``
    times each.

    The ping is what the loop does not see: a request's reads, writes and wake-ups are system
    calls, and on a kernel with Meltdown's page-table isolation (PTI) each costs several times
    more (the 2 GHz Skylake this project ran on from 2026-11-30: 4–6 µs a ping).

    Args:
        loops: ``sum(range(50))`` calls per repeat. Default 50,000 (about 0.05 s).
        repeats: repeats of each. Default 10.
        hash_mib: MiB hashed per repeat. Default 8 (about 0.04 s at 200 MB/s).
        pings: one-byte ``send`` + ``recv`` pairs per repeat. Default 5,000 (about 0.03 s).
    """
    loop_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            sum(range(50))
        loop_times.append((time.perf_counter() - start) / loops * 1e6)
    data = bytes(hash_mib << 20)
    hash_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        hash_times.append(time.perf_counter() - start)
    megabytes = len(data) / 1e6
    ping_times = []
    left, right = socket.socketpair()
    with left, right:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(pings):
                left.send(b"x")
                right.recv(1)
            ping_times.append((time.perf_counter() - start) / pings * 1e6)
    return Speed(
        python_loop_us=sum(loop_times) / repeats,
        python_loop_best_us=min(loop_times),
        sha256_mb_s=megabytes * repeats / sum(hash_times),
        sha256_best_mb_s=megabytes / min(hash_times),
        ping_us=sum(ping_times) / repeats,
        ping_best_us=min(ping_times),
    )


def speed_line(before: Speed, after: Speed) -> str:
    """The report's line: both measurements, taken before and after the run."""
    return (
        "Machine speed before / after the run (`benchmarks/machine_speed.py`; mean, best in "
        f"brackets): a pure-Python loop {before.python_loop_us:.2f} "
        f"({before.python_loop_best_us:.2f}) / {after.python_loop_us:.2f} "
        f"({after.python_loop_best_us:.2f}) µs (lower is faster), sha256 "
        f"{before.sha256_mb_s:.0f} ({before.sha256_best_mb_s:.0f}) / {after.sha256_mb_s:.0f} "
        f"({after.sha256_best_mb_s:.0f}) MB/s (higher is faster), a one-byte socketpair ping "
        f"{before.ping_us:.1f} ({before.ping_best_us:.1f}) / {after.ping_us:.1f} "
        f"({after.ping_best_us:.1f}) µs (system calls; lower is faster). Compare these before "
        "comparing CPU seconds across reports: this machine's speed drifts, and a slow spell "
        "counts as CPU time."
    )
