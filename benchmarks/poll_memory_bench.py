"""The aggregator's memory per waiting long poll: what part of its RSS grows with the sites.

``python -m benchmarks.poll_memory_bench [--sites 100 1000]`` writes
``benchmarks/results/poll_memory.md``.

For each N: one ``python -m aggregator serve`` process (SQLite, its defaults), N sites enrolled
(then 2 s of quiet), and then N long polls (``GET /tasks/next?wait=25&model=1``, as the agent
asks), each on its own keep-alive connection, left waiting for 12 s with no experiment
running; the aggregator's RSS (``/proc``) is read before the polls, while they wait, and 15 s
after they were dropped (the server ends a long poll whose client left), then again for a
second batch of N polls (memory reused, or more of it?). Between a round's bursts every site of a federation waits in such a
poll, so this is the part of the memory that cannot be flat in sites.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
from pathlib import Path

import httpx

from benchmarks.light_http import LightConnection
from benchmarks.scale_bench import Aggregator, enroll_sites, new_researcher, proc_cpu_rss
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import API, bearer

REPORT = Path(__file__).parent / "results" / "poll_memory.md"


async def measure(n: int, work: Path) -> list[float]:
    """RSS in MiB: N sites enrolled; N polls waiting, and after they were dropped and waited
    out; the same again for a second batch of N polls."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    agg = Aggregator(work / "agg", free_port(), None)
    try:
        async with httpx.AsyncClient(base_url=agg.base, timeout=120) as client:
            sites = await enroll_sites(client, await new_researcher(client, "b"), n)
        await asyncio.sleep(2)
        found = [proc_cpu_rss(agg.proc.pid)[1]]
        for _ in range(2):  # a second batch: memory reused, or more of it?
            conns = [LightConnection(agg.base) for _ in sites]
            polls = [
                asyncio.create_task(
                    conn.request(
                        "GET",
                        f"{API}/tasks/next",
                        params={"wait": 25, "model": 1},
                        headers=bearer(tok),
                    )
                )
                for conn, (_, _, tok) in zip(conns, sites, strict=True)
            ]
            await asyncio.sleep(12)
            found.append(proc_cpu_rss(agg.proc.pid)[1])
            for poll in polls:
                poll.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            for conn in conns:
                conn.close()
            # The server ends a long poll whose client left (it watches for the disconnect).
            await asyncio.sleep(15)
            found.append(proc_cpu_rss(agg.proc.pid)[1])
    finally:
        agg.stop()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fedseg_poll_memory"))
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    rows = []
    for n in args.sites:
        enrolled, waiting, dropped, again, end = asyncio.run(measure(n, args.work_dir / str(n)))
        per = (waiting - enrolled) * 1024 / n
        rows.append(
            f"| {n} | {enrolled:.1f} | {waiting:.1f} | {per:.1f} | {dropped:.1f} | {again:.1f} "
            f"| {end:.1f} |"
        )
        print(rows[-1], flush=True)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    command = "python -m benchmarks.poll_memory_bench " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    args.out.write_text(
        "# Aggregator memory per waiting long poll\n\n"
        + (__doc__ or "").split("\n\n", 1)[1].strip()
        + f"\n\nCommand: `{command}`.\n\n"
        "| sites | RSS enrolled (MiB) | RSS, all polls waiting (MiB) | per waiting poll (KiB) "
        "| RSS 15 s after they were dropped (MiB) | a second batch waiting (MiB) "
        "| 15 s after it was dropped (MiB) |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
