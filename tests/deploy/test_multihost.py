"""A federated round across network namespaces: HTTPS by IP, dev CA, agents with no inbound port.

Three "hosts" on a private /24 (``deploy.launcher.netns``): the aggregator, and two hospitals each running
``fedseg site run``. The test is the researcher, from the root namespace over its own veth. It
creates the researcher, registers the sites, starts a one-round experiment with a tiny 2-D U-Net
and checks that the round closed with both updates accepted, while no agent ever listened on a
TCP port and every agent connection went out to the aggregator. Where ``iptables`` or ``nft``
exists, inbound TCP connection attempts to the hospitals' namespaces are dropped throughout.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from data_specs.researcher.experiments import ExperimentCreate
from data_specs.researcher.rounds import RoundPublic
from data_specs.task_spec import TaskSpec
from data_specs.wire import TrainConfig
from deploy.console.researcher_client import TERMINAL_STATUSES, ResearcherApiError, ResearcherClient
from deploy.launcher.netns import PrivateNetwork
from deploy.tls import client_ssl_context, make_dev_ca, make_server_cert

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

FEDSEG = str(Path(sys.executable).parent / "fedseg")
PORT = 8443
SITES = ("site-a", "site-b")
# fedseg data synth's default hospitals have three foreground classes.
TINY_SPEC = TaskSpec(
    spatial_dims=2,
    out_channels=4,
    channels=(4, 8),
    strides=(2,),
    num_res_units=0,
    patch_size=(32, 32),
)


@dataclass
class Services:
    """The processes the test started in the namespaces, with their logs."""

    net: PrivateNetwork
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, role: str, argv: list[str], env: dict[str, str]) -> None:
        with (self.log_dir / f"{role}.log").open("wb") as log:
            self.procs[role] = self.net.start(
                role, argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    def logs(self, lines: int = 30) -> str:
        parts = []
        for role in self.procs:
            text = (self.log_dir / f"{role}.log").read_text(errors="replace")
            parts.append(f"--- {role} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def wait(self, what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
        """Call ``probe`` until it returns something truthy; fail at once if a service died."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            dead = {role: p.returncode for role, p in self.procs.items() if p.poll() is not None}
            if dead:
                pytest.fail(f"while waiting for {what}, exited: {dead}\n{self.logs()}")
            try:
                if result := probe():
                    return result
            except (httpx.HTTPError, ResearcherApiError) as exc:
                last_error = exc
            time.sleep(0.3)
        pytest.fail(f"timed out waiting for {what} (last error: {last_error})\n{self.logs()}")


def synth_hospitals(out: Path) -> list[Path]:
    """Two tiny synthetic 2-D hospitals; returns their manifests."""
    argv = [FEDSEG, "data", "synth", str(out), "--sites", "2", "--cases", "6", "--dims", "2"]
    proc = subprocess.run([*argv, "--seed", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifests = sorted(out.rglob("dataset.json"))
    assert len(manifests) == 2, f"expected 2 manifests under {out}, got {manifests}"
    return manifests


def outbound_only(net: PrivateNetwork) -> set[str]:
    """Check every site namespace: no listening TCP socket, every connection to the aggregator.

    Returns:
        The sites that had a connection open at this moment.
    """
    agg = net["aggregator"]
    connected = set()
    for role in SITES:
        site = net[role]
        assert site.listening_tcp() == [], f"{role} listens on a TCP port"
        for local, peer in site.tcp_connections():
            assert local.startswith(f"{site.address}:") and peer == f"{agg.address}:{PORT}", (
                f"{role}: unexpected connection {local} -> {peer}"
            )
            connected.add(role)
    return connected


def test_round_across_namespaces(
    federation_net: PrivateNetwork, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    net = federation_net
    services = Services(net, tmp_path)
    agg = net["aggregator"]
    base = f"https://{agg.address}:{PORT}"

    manifests = synth_hospitals(tmp_path / "hospitals")
    certs = make_server_cert(make_dev_ca(tmp_path / "certs"), tmp_path / "certs", [agg.address])
    ca_pem = tmp_path / "certs" / "ca.pem"
    admin_token = secrets.token_urlsafe(24)
    token_file = tmp_path / "admin_token"
    token_file.write_text(admin_token)
    token_file.chmod(0o600)
    # Inbound TCP connection attempts to the hospitals are dropped, where a firewall tool exists.
    firewall = {role: net[role].block_inbound_tcp() for role in SITES}

    serve = [FEDSEG, "aggregator", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
    serve += ["--data-dir", str(tmp_path / "agg"), "--admin-token-file", str(token_file)]
    serve += ["--ssl-certfile", str(certs.cert_path), "--ssl-keyfile", str(certs.key_path)]
    services.start(
        "aggregator",
        serve,
        {"FEDSEG_AGG_ORCHESTRATOR_INTERVAL_S": "0.2", "FEDSEG_AGG_LOG_FORMAT": "kv"},
    )

    # The researcher reaches the aggregator by IP, verifying it against the dev CA only.
    http = httpx.Client(base_url=base, verify=client_ssl_context(ca_pem), timeout=15)
    # Closed before the namespaces go: uvicorn's graceful shutdown waits for open connections.
    request.addfinalizer(http.close)
    services.wait(
        "the aggregator's /healthz over HTTPS", lambda: http.get("/healthz").is_success, 60
    )
    client = ResearcherClient(http)
    client.create_researcher(admin_token, "netns-researcher")  # then acts as that researcher

    site_ids: dict[str, str] = {}
    for role, manifest in zip(SITES, manifests, strict=True):
        reg = client.register_site(f"hospital-{role}")
        site_ids[role] = reg.id
        env = {
            "FEDSEG_SITE_AGGREGATOR_URL": base,
            "FEDSEG_SITE_ENROLLMENT_TOKEN": reg.enrollment_token,
            "FEDSEG_SITE_CA_BUNDLE": str(ca_pem),
            "FEDSEG_SITE_MANIFEST": str(manifest),
            "FEDSEG_SITE_WORK_DIR": str(tmp_path / f"work-{role}"),
            "FEDSEG_SITE_DEVICE": "cpu",
            "FEDSEG_SITE_POLL_WAIT_S": "2",
            "FEDSEG_SITE_ACCEPT_EXPERIMENTS": '["*"]',
        }
        services.start(role, [FEDSEG, "site", "run"], env)

    def enrolled() -> bool:
        ready = {s.id for s in client.sites() if s.status == "enrolled"}
        return ready >= set(site_ids.values())

    services.wait("both sites to enroll", enrolled, 60)

    experiment = ExperimentCreate(
        name="netns-round",
        spec=TINY_SPEC,
        rounds=1,
        min_sites=2,
        sites=sorted(site_ids.values()),
        train=TrainConfig(local_epochs=1, batch_size=2, lr=0.01),
        round_deadline_s=60,
        max_round_retries=0,
        seed=7,
    )
    exp_id = client.create_experiment(experiment).id
    assert client.start(exp_id).status == "running"

    seen_connected: set[str] = set()

    def round_done() -> list[RoundPublic]:
        seen_connected.update(outbound_only(net))
        rounds = client.rounds(exp_id)
        return [r for r in rounds if r.number == 1 and r.status in ("closed", "failed")]

    final = services.wait("round 1 to close", round_done, 90)[-1]
    assert final.status == "closed", f"{final}\n{services.logs()}"
    by_site = {s.site_id: s for s in final.sites}
    assert set(by_site) == set(site_ids.values())
    for role, site_id in site_ids.items():
        part = by_site[site_id]
        assert part.status == "accepted", f"{role}: {part}\n{services.logs()}"
        assert part.num_samples and part.bytes_up > 0 and part.bytes_down > 0
    assert final.model_sha256

    def experiment_status() -> str | None:
        status = client.experiment(exp_id).status
        return status if status in TERMINAL_STATUSES else None

    assert services.wait("the experiment to finish", experiment_status, 30) == "completed"

    # Still no listener; and each agent was seen with a connection open to the aggregator.
    seen_connected.update(outbound_only(net))
    assert seen_connected == set(SITES), f"connections seen only from {seen_connected}"
    for role in SITES:
        assert (tmp_path / f"work-{role}" / "site_token").stat().st_mode & 0o077 == 0
    print(f"\nfirewall on the site namespaces: {firewall}; agents seen connected: {seen_connected}")
