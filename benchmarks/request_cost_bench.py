"""The aggregator's CPU per request, by kind: what one site costs it per round.

``python -m benchmarks.request_cost_bench [--sites 200] [--database sqlite|postgresql]`` prints a
table (markdown).

One ``python -m aggregator serve`` process (its defaults; SQLite in its data dir, or a throw-away
PostgreSQL server started here with fsync on) and one client sending requests one after
another: N sites enrolled, then N of each kind of request a site makes in a round (long poll
answered at once with no task, long poll that gets a task with its model, as the agent asks,
and the same without the model followed by the model download, update upload), plus
``/healthz`` (the HTTP stack alone) and the researcher's status read. The
figure is the aggregator process's CPU seconds (``/proc``) over the batch divided by N, so it
does not depend on how busy the machine is (the orchestrator's idle 1 s tick is included; it is
a few milliseconds per second).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scale_bench import TICK, Aggregator
from data_specs.constants import HEADER_TASK_BYTES
from tests.aggregator.e2e_helpers import free_port
from tests.aggregator.helpers import (
    ADMIN_TOKEN,
    API,
    TINY_SPEC,
    bearer,
    update_bundle,
    upload_headers,
)
from tests.aggregator.postgres import PostgresServer


def proc_user_sys(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(agg: Aggregator, label: str, one: Callable[[int], Any], n: int) -> str:
    """A table row: the aggregator's CPU milliseconds per call of ``one`` over ``n`` calls."""
    time.sleep(1.0)  # let the previous batch's work end
    user0, sys0 = proc_user_sys(agg.proc.pid)
    for i in range(n):
        one(i)
    time.sleep(1.0)
    user1, sys1 = proc_user_sys(agg.proc.pid)
    user, system = 1000 * (user1 - user0) / n, 1000 * (sys1 - sys0) / n
    return f"| {label} | {n} | {user + system:.2f} | {user:.2f} | {system:.2f} |"


def run(work: Path, n: int, database_url: str | None = None) -> list[str]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    agg = Aggregator(work / "agg", free_port(), database_url)
    rows = [
        "| request | n | aggregator CPU ms per request | of which user | of which system |",
        "|---|---|---|---|---|",
    ]
    try:
        with httpx.Client(base_url=agg.base, timeout=120) as c:
            r = c.post(f"{API}/researchers", json={"name": "b"}, headers=bearer(ADMIN_TOKEN))
            rh = bearer(r.json()["token"])
            tokens: list[str] = []
            for i in range(n):
                made = c.post(f"{API}/sites", json={"name": f"s{i}"}, headers=rh).json()
                body = {"enrollment_token": made["enrollment_token"], "accept_experiments": ["*"]}
                tokens.append(c.post(f"{API}/sites/enroll", json=body).json()["site_token"])
            rows.append(measure(agg, "GET /healthz", lambda i: c.get("/healthz"), n))
            rows.append(
                measure(
                    agg,
                    "GET /tasks/next?wait=0, no task",
                    lambda i: c.get(f"{API}/tasks/next", headers=bearer(tokens[i])),
                    n,
                )
            )
            rows.append(
                measure(
                    agg,
                    "same again (token known)",
                    lambda i: c.get(f"{API}/tasks/next", headers=bearer(tokens[i])),
                    n,
                )
            )
            spec = TINY_SPEC.model_dump(mode="json")
            exp_body = {"name": "x", "spec": spec, "rounds": 1, "fraction": 1.0, "min_sites": n}
            exp_body |= {"seed": 1, "round_deadline_s": 3600}
            exp = c.post(f"{API}/experiments", json=exp_body, headers=rh).json()["id"]
            c.post(f"{API}/experiments/{exp}/start", headers=rh).raise_for_status()
            time.sleep(3)  # the orchestrator opens round 1
            tasks: dict[int, dict[str, Any]] = {}
            models: dict[int, bytes] = {}

            def poll_with_model(i: int) -> None:
                got = c.get(
                    f"{API}/tasks/next", params={"wait": 5, "model": 1}, headers=bearer(tokens[i])
                ).raise_for_status()
                split = int(got.headers[HEADER_TASK_BYTES])
                models[i] = got.content[split:]

            def poll(i: int) -> None:
                got = c.get(f"{API}/tasks/next", params={"wait": 5}, headers=bearer(tokens[i]))
                tasks[i] = got.raise_for_status().json()

            def model(i: int) -> None:
                url = f"{API}/tasks/{tasks[i]['task_id']}/model"
                models[i] = c.get(url, headers=bearer(tokens[i])).raise_for_status().content

            rows.append(
                measure(
                    agg,
                    "GET /tasks/next?wait=5&model=1, a task and its model (the agent)",
                    poll_with_model,
                    n,
                )
            )
            rows.append(measure(agg, "GET /tasks/next?wait=5, the task alone", poll, n))
            rows.append(measure(agg, "GET /tasks/{id}/model", model, n))
            bodies = {
                i: update_bundle(
                    models[i],
                    site=f"s{i}",
                    round_number=1,
                    num_samples=10,
                    spec_hash=tasks[i]["spec_hash"],
                )
                for i in range(n)
            }

            def upload(i: int) -> None:
                url = f"{API}/tasks/{tasks[i]['task_id']}/update"
                headers = upload_headers(tokens[i], bodies[i], 10)
                c.put(url, content=bodies[i], headers=headers).raise_for_status()

            # n - 1 uploads: the round stays open (no aggregation inside the batch).
            rows.append(measure(agg, "PUT /tasks/{id}/update", upload, n - 1))
            status = f"{API}/experiments/{exp}"
            rows.append(
                measure(agg, "GET /experiments/{id}", lambda i: c.get(status, headers=rh), n)
            )
    finally:
        agg.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/fedseg_request_cost"))
    args = parser.parse_args(argv)
    pg = PostgresServer(durable=True).start() if args.database == "postgresql" else None
    try:
        print("\n".join(run(args.work_dir, args.sites, pg.database_url() if pg else None)))
    finally:
        if pg is not None:
            pg.stop()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
