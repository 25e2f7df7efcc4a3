"""Hundreds to a thousand light sites against one aggregator process, on SQLite and PostgreSQL.

``python -m benchmarks.scale_bench --sites 100 1000 --databases sqlite postgresql`` writes
``benchmarks/results/scale.md``.

One ``python -m aggregator serve`` process (the product's defaults: 1 s orchestrator tick, 8
concurrent uploads) serves N simulated sites. The sites are light: coroutines in one client
process, each the real HTTP protocol of an agent on its own keep-alive HTTP/1.1 connection
(``benchmarks.light_http``: long poll ``GET /tasks/next?wait=20&model=1``, which brings the
global model with the task as the agent asks for it (else download it),
upload an update with its sha256 and sample count, retry on 429 after the agent's backoff)
with fake training (the downloaded tiny U-Net, decoded once per round, plus a fixed seeded
step per site; no torch; each site's sample count, 5-100, fixed per site). A FedAvg
experiment samples every site in every round. Measured per round: wall time (``closed_at -
opened_at``), the aggregator process's CPU seconds and peak RSS (``/proc``), the database's size
after the round, and the long-poll delivery latency (a site's task in hand minus the round's
``opened_at``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.light_http import LightConnection, LightHTTPError, LightResponse
from data_specs.constants import HEADER_TASK_BYTES, BundleKind
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    TINY_SPEC,
    bearer,
    plausible_weights,
    upload_headers,
)
from tests.aggregator.postgres import PostgresServer, database_name

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "results" / "scale.md"
TICK = os.sysconf("SC_CLK_TCK")
LOADS = os.getloadavg()


@dataclass
class RunResult:
    database: str
    sites: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    setup_s: float = 0.0
    retries_429: int = 0
    reconnects: int = 0
    rss_start_mb: float = 0.0


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, RSS MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss_kb = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss_kb / 1024


RECONNECTS = {"n": 0}


async def call(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, sent again on a transport error (a keep-alive connection the server closed
    as the request went out: httpx does not retry)."""
    for attempt in range(8):
        try:
            return await client.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == 7:
                raise
            RECONNECTS["n"] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()


class Aggregator:
    """``python -m aggregator serve`` on a port, SQLite in its data dir or a PostgreSQL URL."""

    def __init__(self, data_dir: Path, port: int, database_url: str | None) -> None:
        data_dir.mkdir(parents=True)
        token = data_dir.parent / "admin_token"
        token.write_text(ADMIN_TOKEN)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDSEG_AGG_LOG_LEVEL": "WARNING"}
        env["FEDSEG_AGG_MAX_LONG_POLL_S"] = "30"
        if database_url:
            env["FEDSEG_AGG_DATABASE_URL"] = database_url
        cmd = [sys.executable, "-m", "aggregator", "serve", "--data-dir", str(data_dir)]
        cmd += ["--port", str(port), "--admin-token-file", str(token)]
        self.log = (data_dir.parent / "aggregator.log").open("ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 900  # minutes on a starved machine
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the aggregator exited at start")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the aggregator did not come up")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def new_researcher(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    """A researcher created with the admin token: the headers of its token."""
    r = await call(
        client, "POST", f"{API}/researchers", json={"name": name}, headers=bearer(ADMIN_TOKEN)
    )
    return bearer(r.json()["token"])


async def enroll_sites(
    client: httpx.AsyncClient, rh: dict[str, str], n: int
) -> list[tuple[str, str, str]]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> tuple[str, str, str]:
        async with gate:
            r = await call(client, "POST", f"{API}/sites", json={"name": f"s{i:04d}"}, headers=rh)
            r.raise_for_status()
            body = {"enrollment_token": r.json()["enrollment_token"], "accept_experiments": ["*"]}
            e = await call(client, "POST", f"{API}/sites/enroll", json=body)
            e.raise_for_status()
            return f"s{i:04d}", e.json()["site_id"], e.json()["site_token"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


class LightUpdates:
    """Fake training for light sites: the global model plus a fixed, seeded step per site.

    The global model is decoded once per round for all sites (by its sha256) and each site's
    step is drawn once: a site's round costs one ``encode_bundle``, not a decode, a dozen
    seeded generators and an encode (what ``tests.aggregator.helpers.update_bundle`` does).
    """

    def __init__(self, scale: float = 0.01) -> None:
        self.scale = scale
        self._theta: dict[str, dict[str, np.ndarray]] = {}
        self._steps: dict[str, dict[str, np.ndarray]] = {}

    def body(self, site: str, task: dict[str, Any], model: bytes, num_samples: int) -> bytes:
        theta = self._theta.get(task["model_sha256"])
        if theta is None:
            decoded = decode_bundle(model).tensors
            theta = {
                k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in decoded.items()
            }
            self._theta = {task["model_sha256"]: theta}  # one round at a time
        step = self._steps.get(site)
        if step is None:
            step = plausible_weights(
                {k: np.zeros_like(v) for k, v in theta.items()},
                site=site,
                round_number=0,
                scale=self.scale,
            )
            self._steps[site] = step
        weights = {k: np.asarray(v + step[k], dtype=v.dtype) for k, v in theta.items()}
        meta = BundleMeta(
            spec_hash=task["spec_hash"],
            round=task["round"],
            kind=BundleKind.FULL,
            num_samples=num_samples,
        )
        return encode_bundle(weights, meta)


def agent_backoff(attempt: int, *, initial: float = 1.0, maximum: float = 60.0) -> float:
    """The site agent's pause before retry ``attempt + 1`` (``site_agent.federation.retry.Backoff``
    with its defaults): half the capped exponential step fixed, the other half random."""
    step = min(maximum / 2, initial / 2 * 2**attempt)
    return step + random.uniform(0, step)


async def light_call(conn: LightConnection, method: str, url: str, **kwargs: Any) -> LightResponse:
    """One request on a site's own connection, sent again after a transport error."""
    for attempt in range(8):
        try:
            return await conn.request(method, url, **kwargs)
        except (OSError, LightHTTPError, asyncio.IncompleteReadError, TimeoutError):
            if attempt == 7:
                raise
            RECONNECTS["n"] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def light_site(
    base: str,
    name: str,
    token: str,
    stop: asyncio.Event,
    received: dict[tuple[str, int], float],
    counters: dict[str, int],
    updates: LightUpdates,
) -> None:
    """One site's protocol with fake training, until ``stop``: its own keep-alive connection."""
    headers = bearer(token)
    samples = 5 + zlib.crc32(name.encode()) % 96  # sites differ, as hospitals do
    conn = LightConnection(base)
    try:
        while not stop.is_set():
            try:
                r = await conn.request(
                    "GET", f"{API}/tasks/next", params={"wait": 20, "model": 1}, headers=headers
                )
            except (OSError, LightHTTPError, asyncio.IncompleteReadError, TimeoutError):
                RECONNECTS["n"] += 1
                await asyncio.sleep(0.5)
                continue
            if r.status_code != 200:
                continue
            received_at = time.time()
            split = r.headers.get(HEADER_TASK_BYTES.lower())
            if split is not None:  # the model came with the task, as the agent asks
                task = json.loads(r.content[: int(split)])
                model_bytes = r.content[int(split) :]
            else:
                task = r.json()
                model = await light_call(
                    conn, "GET", f"{API}/tasks/{task['task_id']}/model", headers=headers
                )
                model.raise_for_status()
                model_bytes = model.content
            received[(name, task["round"])] = received_at
            body = updates.body(name, task, model_bytes, samples)
            up_headers = upload_headers(token, body, samples)
            for attempt in itertools.count():
                up = await light_call(
                    conn,
                    "PUT",
                    f"{API}/tasks/{task['task_id']}/update",
                    content=body,
                    headers=up_headers,
                )
                if up.status_code not in (429, 503):
                    up.raise_for_status()
                    break
                counters["429"] += 1
                await asyncio.sleep(agent_backoff(attempt))
        RECONNECTS["n"] += conn.reconnects
    finally:
        conn.close()


def database_size(data_dir: Path, pg: PostgresServer | None, url: str | None) -> int:
    if pg is None or url is None:
        return sum(p.stat().st_size for p in data_dir.glob("aggregator.db*"))
    import psycopg

    name = database_name(url)
    with psycopg.connect(host=str(pg.socket_dir), user=pg.superuser, dbname=name) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    return int(row[0]) if row else 0


async def run_one(
    database: str, n: int, rounds: int, work: Path, pg: PostgresServer | None
) -> RunResult:
    url = pg.database_url() if (database == "postgresql" and pg is not None) else None
    data_dir = work / f"{database}_{n}" / "agg"
    agg = Aggregator(data_dir, free_port(), url)
    result = RunResult(database=database, sites=n)
    RECONNECTS["n"] = 0
    samples: list[tuple[float, float, float, float]] = []  # (time, cpu s, rss MiB, client cpu s)
    limits = httpx.Limits(max_connections=n + 64, max_keepalive_connections=n + 64)
    try:
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=agg.base, timeout=120, limits=limits) as client:
            rh = await new_researcher(client, "bench")
            sites = await enroll_sites(client, rh, n)
            ids = [site_id for _, site_id, _ in sites]
            body = {
                "name": f"scale-{n}",
                "spec": TINY_SPEC.model_dump(mode="json"),
                "rounds": rounds,
                "fraction": 1.0,
                "min_sites": n,
                "seed": 1,
                "round_deadline_s": 3600,
                "sites": ids,
            }
            exp = (await call(client, "POST", f"{API}/experiments", json=body, headers=rh)).json()[
                "id"
            ]
            result.setup_s = time.monotonic() - t0
            result.rss_start_mb = proc_cpu_rss(agg.proc.pid)[1]
            stop = asyncio.Event()
            received: dict[tuple[str, int], float] = {}
            counters = {"429": 0}
            updates = LightUpdates()
            workers = [
                asyncio.create_task(
                    light_site(agg.base, name, tok, stop, received, counters, updates)
                )
                for name, _, tok in sites
            ]
            sizes: dict[int, int] = {}
            gc_at_open: dict[int, float] = {}  # the aggregator's GC seconds as each round opened
            (
                await call(client, "POST", f"{API}/experiments/{exp}/start", headers=rh)
            ).raise_for_status()
            while True:
                samples.append((time.time(), *proc_cpu_rss(agg.proc.pid), time.process_time()))
                state = (await call(client, "GET", f"{API}/experiments/{exp}", headers=rh)).json()
                done = state["current_round"]
                if done and done not in sizes:
                    sizes[done] = database_size(data_dir, pg, url)
                    gc_at_open[done] = await gc_seconds(client)
                if state["status"] != "running":
                    if done:
                        gc_at_open[done + 1] = await gc_seconds(client)
                    break
                await asyncio.sleep(0.5)
            stop.set()
            history = (
                await call(client, "GET", f"{API}/experiments/{exp}/rounds", headers=rh)
            ).json()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        result.retries_429 = counters["429"]
        result.reconnects = RECONNECTS["n"]
        opens = {r["number"]: parse_time(r["opened_at"]) for r in history}
        for rnd in history:
            if rnd["status"] != "closed":
                continue
            opened, closed = parse_time(rnd["opened_at"]), parse_time(rnd["closed_at"])
            timeline = rnd.get("timeline") or {}
            next_open = opens.get(rnd["number"] + 1)
            inside = [s for s in samples if opened - 0.5 <= s[0] <= closed + 0.5] or samples[-1:]
            latencies = sorted(
                t - opened for (_, number), t in received.items() if number == rnd["number"]
            )
            result.rounds.append(
                {
                    "round": rnd["number"],
                    "wall_s": closed - opened,
                    "cpu_s": inside[-1][1] - inside[0][1],
                    "client_cpu_s": inside[-1][3] - inside[0][3],
                    "close_s": (timeline.get("close_latency_s") or 0.0)
                    + (timeline.get("aggregate_s") or 0.0),
                    "reopen_s": next_open - closed if next_open else float("nan"),
                    "rss_mb": max(s[2] for s in inside),
                    "db_mb": sizes.get(rnd["number"], 0) / 2**20,
                    "p50_s": statistics.median(latencies) if latencies else float("nan"),
                    "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                    if latencies
                    else float("nan"),
                    "updates": len([s for s in rnd["sites"] if s["status"] == "accepted"]),
                    "gc_s": gc_at_open.get(rnd["number"] + 1, float("nan"))
                    - gc_at_open.get(rnd["number"], float("nan")),
                }
            )
    finally:
        agg.stop()
    return result


async def gc_seconds(client: httpx.AsyncClient) -> float:
    """The aggregator's garbage-collection pauses so far (``fedseg_gc_pause_seconds_total``,
    all generations), from ``/metrics``; NaN when it does not expose them."""
    text = (await call(client, "GET", "/metrics")).text
    found = re.findall(r"^fedseg_gc_pause_seconds_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in found) if found else float("nan")


def report(results: list[RunResult], command: str, speed: str = "") -> str:
    lines = [
        "# Scale: light simulated sites against one aggregator process",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()} Linux, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"this benchmark's processes at nice {os.nice(0)} (the load average below shows what else ran)",
        f"- Command: `{command}`",
        "",
        "One `python -m aggregator serve` process with its defaults (1 s orchestrator tick, 8 concurrent "
        "uploads, SQLite `synchronous=FULL` or PostgreSQL 15 from Debian with fsync on). The sites are "
        "coroutines in one client process on the same 2 cores, each on its own keep-alive HTTP/1.1 "
        "connection (`benchmarks/light_http.py`): each long-polls, downloads the global model, "
        "uploads a fake update (the tiny U-Net `(4, 8)` at 16x16, 3 KB: the global model plus a "
        "fixed seeded step per site, with a sample count of 5-100 fixed per site) and retries on 429 after the site agent's backoff (0.5-1 s, "
        "doubling). Every site is sampled every round (FedAvg, `min_sites` = all).",
        "",
        "Columns: wall = round `closed_at - opened_at` (with fake training this is all round overhead: "
        "delivery, downloads, uploads, checks, aggregation); close = last accepted report to "
        "`closed_at` (the round's `close_latency_s + aggregate_s`); reopen = `closed_at` to the next "
        "round's `opened_at`; agg CPU = the aggregator process's CPU seconds during the round (the "
        "load-independent cost); sites CPU = the client process's (all sites) CPU seconds; RSS = the "
        "aggregator's peak resident memory; DB = database size after the round; p50 / p99 = delay "
        "from the round's `opened_at` to a site holding its task (long-poll delivery); GC = the "
        "aggregator's garbage-collection pauses (`fedseg_gc_pause_seconds_total` on `/metrics`, "
        "read as each round opens, so each figure's edges are within the 0.5 s status poll).",
        "",
        f"Load average (1 min) at the start / end: {LOADS[0]:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores: wall times are starved by other work; CPU seconds are not.",
        *([speed, ""] if speed else [""]),
        "| database | sites | round | wall s | close s | reopen s | agg CPU s | sites CPU s | RSS MiB "
        "| DB MiB | p50 s | p99 s | updates | GC s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res.rounds:
            lines.append(
                f"| {res.database} | {res.sites} | {r['round']} | {r['wall_s']:.1f} "
                f"| {r['close_s']:.2f} | {r['reopen_s']:.2f} | {r['cpu_s']:.1f} "
                f"| {r['client_cpu_s']:.1f} | {r['rss_mb']:.0f} | {r['db_mb']:.2f} "
                f"| {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['updates']} "
                f"| {r.get('gc_s', float('nan')):.2f} |"
            )
    lines += [
        "",
        "| database | sites | set-up s | RSS at start MiB | upload retries (429) | requests resent |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        lines.append(
            f"| {res.database} | {res.sites} | {res.setup_s:.0f} | {res.rss_start_mb:.0f} | {res.retries_429} | {res.reconnects} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fedseg_scale"))
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    import shutil

    shutil.rmtree(args.work_dir, ignore_errors=True)
    from benchmarks.machine_speed import measure, speed_line

    before = measure()
    pg = PostgresServer(durable=True).start() if "postgresql" in args.databases else None
    results = []
    try:
        for database in args.databases:
            for n in args.sites:
                res = asyncio.run(run_one(database, n, args.rounds, args.work_dir, pg))
                print(res, flush=True)
                results.append(res)
    finally:
        if pg is not None:
            pg.stop()
    command = "python -m benchmarks.scale_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(report(results, command, speed_line(before, measure())))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
