"""A throwaway private IPv4 network of Linux network namespaces, for the multi-host test.

Each role (``aggregator``, ``site-a``, ...) gets its own namespace with one veth end ``eth0`` on a
private /24 (``10.213.X.0/24``); the other ends sit on a bridge inside a hub namespace, so nothing
is added to the host's own network unless a role is asked to live in the root namespace (the test
itself, as the researcher). Everything made is removed on exit, also after a failure.
Needs root and iproute2; ``netns_unavailable_reason`` says why not when it cannot work.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

_FIRST_OCTETS = "10.213"
_HUB_BRIDGE = "br0"


class NetnsError(RuntimeError):
    """An ``ip`` command that builds or inspects the private network failed."""


def _ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not Linux, not root, no ``ip``, EPERM), or None."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "network namespaces need root (run the netns tests as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"fedseg-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One machine of the private network: a namespace (None = the root one) and its address."""

    role: str
    netns: str | None
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def run(self, argv: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here and wait; output captured as text, exit status not checked."""
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def listening_tcp(self) -> list[str]:
        """Local addresses of every listening TCP socket in this namespace (``ss -ltn``)."""
        out = self.run(["ss", "-ltnH"]).stdout
        return [line.split()[3] for line in out.splitlines() if line.strip()]

    def tcp_connections(self) -> list[tuple[str, str]]:
        """``(local, peer)`` address pairs of established TCP connections in this namespace."""
        out = self.run(["ss", "-tnH", "state", "established"]).stdout
        return [
            (cols[2], cols[3]) for cols in (ln.split() for ln in out.splitlines()) if len(cols) >= 4
        ]

    def block_inbound_tcp(self) -> str | None:
        """Drop every inbound TCP connection attempt (SYN without ACK) to this namespace.

        Returns:
            The tool used (``iptables`` or ``nft``), or None when neither is installed.
        """
        if self.netns is None:
            raise NetnsError("refusing to firewall the root namespace")
        if shutil.which("iptables"):
            rule = ["iptables", "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"]
            self._check(rule)
            return "iptables"
        if shutil.which("nft"):
            self._check(["nft", "add", "table", "inet", "fedseg"])
            hook = "{ type filter hook input priority 0 ; policy accept ; }"
            self._check(["nft", "add", "chain", "inet", "fedseg", "input", hook])
            drop = "tcp flags & (syn | ack) == syn drop"
            self._check(["nft", "add", "rule", "inet", "fedseg", "input", *drop.split()])
            return "nft"
        return None

    def _check(self, argv: Sequence[str]) -> None:
        proc = self.run(argv)
        if proc.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` in {self.role} failed: {proc.stderr.strip()}")


@dataclass
class PrivateNetwork:
    """The namespaces, links and processes one ``private_network`` block made."""

    suffix: str
    subnet: ipaddress.IPv4Network
    hub: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def start(
        self, role: str, argv: Sequence[str], **popen_kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``role``'s namespace; it is stopped when the network is removed.

        Args:
            role: a role given to ``private_network``.
            argv: the command. Example: ``[".venv/bin/fedseg", "site", "run"]``.
            **popen_kwargs: passed to ``subprocess.Popen`` (``env``, ``stdout``, ``cwd``, ...).
        """
        proc = subprocess.Popen(
            self.hosts[role].command(argv), start_new_session=True, **popen_kwargs
        )  # type: ignore[call-overload]
        self.processes.append(proc)
        return proc

    def remove(self) -> list[str]:
        """Stop the processes started here, then delete every namespace and link made. Idempotent.

        Returns:
            Problems met on the way (empty when everything went), so a caller can report them.
        """
        problems: list[str] = []
        # Newest first: clients (agents) go before the server, whose graceful shutdown would
        # otherwise wait for their open long polls.
        for proc in reversed(self.processes):
            _stop(proc)
        self.processes.clear()
        for link in self.root_links:
            if _ip("link", "show", link, check=False).returncode == 0:
                done = _ip("link", "del", link, check=False)
                if done.returncode:
                    problems.append(f"link {link}: {done.stderr.strip()}")
        self.root_links.clear()
        for ns in reversed(self.namespaces):
            done = _ip("netns", "del", ns, check=False)
            if done.returncode and ns in _ip("netns", "list", check=False).stdout.split():
                problems.append(f"netns {ns}: {done.stderr.strip()}")
        self.namespaces.clear()
        return problems


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    # The process leads its own session (start_new_session), so its group id is its pid:
    # this reaches its children (data loader workers) and nothing else.
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _free_subnet(third_octet: int | None) -> ipaddress.IPv4Network:
    # `ip -4 route` lines start with the destination ("10.0.0.0/8", "192.0.2.1") or a word
    # ("default", "local", "broadcast"); only destinations can collide with our /24.
    taken = [
        ipaddress.IPv4Network(word, strict=False)
        for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines()
        for word in line.split()[:1]
        if word[0].isdigit()
    ]
    candidates = (
        [third_octet] if third_octet is not None else secrets.SystemRandom().sample(range(256), 256)
    )
    for octet in candidates:
        net = ipaddress.IPv4Network(f"{_FIRST_OCTETS}.{octet}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise NetnsError(f"no free /24 under {_FIRST_OCTETS}.0.0/16 on this host")


@contextlib.contextmanager
def private_network(
    roles: Sequence[str], *, root_role: str | None = None, third_octet: int | None = None
) -> Iterator[PrivateNetwork]:
    """Build a bridged /24 with one namespace per role; remove it all when the block ends.

    Args:
        roles: names of the namespaced hosts, in address order (``.2``, ``.3``, ...).
            Example: ``["aggregator", "site-a", "site-b"]``.
        root_role: if given, the root namespace joins too as this role with address ``.1``
            (one veth in the root namespace), so the calling process can talk to the others.
        third_octet: X of ``10.213.X.0/24``; default a random one no route on this host uses.

    Yields:
        The ``PrivateNetwork``; ``net["site-a"].address`` is that host's IPv4 address.
    """
    suffix = secrets.token_hex(3)
    net = PrivateNetwork(
        suffix=suffix, subnet=_free_subnet(third_octet), hub=f"fedseg-hub-{suffix}"
    )
    prefix = net.subnet.prefixlen
    try:
        _add_netns(net, net.hub)
        _ip("link", "add", _HUB_BRIDGE, "type", "bridge", netns=net.hub)
        _ip("link", "set", _HUB_BRIDGE, "up", netns=net.hub)
        for index, role in enumerate(roles):
            ns = f"fedseg-{role}-{suffix}"
            address = str(net.subnet.network_address + 2 + index)
            _add_netns(net, ns)
            _ip("link", "set", "lo", "up", netns=ns)
            port = f"p{index}"
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                net.hub,
            )
            _plug(net.hub, port)
            _ip("addr", "add", f"{address}/{prefix}", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            net.hosts[role] = Host(role=role, netns=ns, address=address)
        if root_role is not None:
            link = f"fs{suffix}h"
            net.root_links.append(link)
            _ip("link", "add", link, "type", "veth", "peer", "name", "proot", "netns", net.hub)
            _plug(net.hub, "proot")
            address = str(net.subnet.network_address + 1)
            _ip("addr", "add", f"{address}/{prefix}", "dev", link)
            _ip("link", "set", link, "up")
            net.hosts[root_role] = Host(role=root_role, netns=None, address=address)
        yield net
    finally:
        problems = net.remove()
        if problems:
            print(f"fedseg netns cleanup problems: {problems}", file=sys.stderr)


def _add_netns(net: PrivateNetwork, name: str) -> None:
    _ip("netns", "add", name)
    net.namespaces.append(name)


def _plug(hub: str, port: str) -> None:
    _ip("link", "set", port, "master", _HUB_BRIDGE, netns=hub)
    _ip("link", "set", port, "up", netns=hub)
