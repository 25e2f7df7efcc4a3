"""Development TLS: a private CA and an aggregator server certificate, plus `fedseg deploy certs`.

These certificates are for demos, the compose file and the multi-host test. A hospital deployment
uses a certificate from the hospital's or the research network's own CA; the site agent only needs
that CA's bundle (``FEDSEG_SITE_CA_BUNDLE``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from data_specs.files import atomic_write_bytes

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"

# RFC 1123 labels; a leading "*." is allowed for wildcard names.
_DNS_NAME = re.compile(
    r"^(\*\.)?(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
# A site name as the aggregator registers it, within X.509's 64-character limit of a CN.
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
# Certificates start a little in the past so that hosts with slightly slow clocks accept them.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertAuthority:
    """A CA certificate with its private key and where both live."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class ServerCert:
    """Paths of a server certificate (PEM) and its private key (PEM, mode 0600)."""

    cert_path: Path
    key_path: Path
    hosts: tuple[str, ...]


class TLSSetupError(ValueError):
    """A host name, a folder or an existing CA file is not what the TLS helpers expected."""


def make_dev_ca(
    out_dir: str | Path, *, common_name: str = "fedseg dev CA", days: int = 825
) -> CertAuthority:
    """Create a private CA and write ``ca.pem`` and ``ca-key.pem`` (0600) into ``out_dir``.

    Args:
        out_dir: folder to write into; created if missing. Example: ``Path("deploy/certs")``.
        common_name: subject CN of the CA. Default ``"fedseg dev CA"``.
        days: validity in days. Default 825.

    Returns:
        The new ``CertAuthority``.
    """
    out = _ensure_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = out / CA_KEY, out / CA_CERT
    # Key first: a CA certificate without its key next to it would be useless for signing.
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CertAuthority(cert=cert, key=key, cert_path=cert_path, key_path=key_path)


def load_ca(ca_dir: str | Path) -> CertAuthority:
    """Read ``ca.pem`` and ``ca-key.pem`` written earlier by ``make_dev_ca``.

    Raises:
        TLSSetupError: a file is missing, unreadable, or the key does not match the certificate.
    """
    folder = Path(ca_dir)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSSetupError(f"expected a CA in {folder} ({CA_CERT} and {CA_KEY}): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise TLSSetupError(f"{key_path} is not the private key of {cert_path}")
    return CertAuthority(cert=cert, key=key, cert_path=cert_path, key_path=key_path)


def make_server_cert(
    ca: CertAuthority, out_dir: str | Path, hosts: list[str], *, days: int = 397
) -> ServerCert:
    """Issue a server certificate for ``hosts`` and write ``server.pem``, ``server-key.pem`` (0600).

    Args:
        ca: the issuing CA (``make_dev_ca`` or ``load_ca``).
        out_dir: folder to write into; created if missing.
        hosts: DNS names and IP addresses the aggregator is reached by; each becomes a subject
            alternative name. The first one is also the subject CN.
            Example: ``["aggregator.local", "10.213.7.2", "127.0.0.1"]``.
        days: validity in days. Default 397 (the most browsers accept).

    Returns:
        The written ``ServerCert``; ``server.pem`` holds the leaf then the CA certificate.

    Raises:
        TLSSetupError: no hosts, or a host that is neither an IP address nor a DNS name.
    """
    sans = subject_alt_names(hosts)
    out = _ensure_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_path, cert_path = out / SERVER_KEY, out / SERVER_CERT
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(pem) + ca.cert.public_bytes(pem))
    return ServerCert(cert_path=cert_path, key_path=key_path, hosts=tuple(hosts))


def make_site_cert(
    ca: CertAuthority, out_dir: str | Path, site_name: str, *, days: int = 397
) -> ServerCert:
    """Issue a client certificate for a site agent (mutual TLS) and write it with its key (0600).

    Args:
        ca: the issuing CA; the aggregator trusts it as ``FEDSEG_AGG_SITE_CA_CERTS``.
        out_dir: folder to write ``site-<name>.pem`` and ``site-<name>-key.pem`` into (a space
            in the name becomes ``_``).
        site_name: the site's name as registered at the aggregator; it becomes the subject CN,
            which the aggregator compares with the site of the token. Example: ``"hospital-a"``.
        days: validity in days. Default 397.

    Returns:
        The written paths (``hosts`` holds the site name).

    Raises:
        TLSSetupError: not a site name of at most 64 characters (letters, digits, space, ``.``,
            ``_``, ``-``, starting with a letter or digit).
    """
    if not _SITE_NAME.match(site_name):
        raise TLSSetupError(
            "expected a site name of at most 64 letters, digits, spaces, '.', '_' or '-', "
            f"got {site_name!r}"
        )
    out = _ensure_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    stem = "site-" + site_name.replace(" ", "_")
    key_path, cert_path = out / f"{stem}-key.pem", out / f"{stem}.pem"
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(pem) + ca.cert.public_bytes(pem))
    return ServerCert(cert_path=cert_path, key_path=key_path, hosts=(site_name,))


def client_ssl_context(ca_bundle: str | Path) -> ssl.SSLContext:
    """An SSL context that trusts only ``ca_bundle`` and checks host names (for httpx ``verify=``).

    Args:
        ca_bundle: PEM file with one or more CA certificates. Example: ``"certs/ca.pem"``.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_bundle))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """The SAN entries of ``hosts``: an ``IPAddress`` for each IP, a ``DNSName`` otherwise.

    Raises:
        TLSSetupError: no hosts, or a host that is neither an IP address nor a DNS name.
    """
    if not hosts:
        raise TLSSetupError("expected at least one host name or IP address, got none")
    return [_san(h) for h in hosts]


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.match(host):
        raise TLSSetupError(f"expected a DNS name or an IP address, got {host!r}")
    return x509.DNSName(host.lower())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TLSSetupError(f"expected a writable folder at {out}: {exc}") from exc
    return out


deploy_app = typer.Typer(
    no_args_is_help=True, help="Deployment helpers: development TLS certificates."
)


@deploy_app.callback()
def _deploy() -> None:
    """Deployment helpers (a callback keeps ``certs`` a sub-command, not the whole app)."""


@deploy_app.command("certs")
def certs(
    out: Annotated[
        Path, typer.Argument(help="Folder for ca.pem, ca-key.pem, server.pem, server-key.pem.")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="DNS name or IP address of the aggregator (repeat). Default: localhost, 127.0.0.1.",
        ),
    ] = None,
    days: Annotated[
        int, typer.Option(min=1, max=3650, help="Server certificate validity in days.")
    ] = 397,
    new_ca: Annotated[
        bool, typer.Option("--new-ca", help="Replace an existing CA in OUT.")
    ] = False,
) -> None:
    """Write a development CA and an aggregator certificate for the given hosts.

    An existing CA in OUT is reused (agents keep trusting the same ca.pem) unless --new-ca.
    Give sites ca.pem only; ca-key.pem and server-key.pem stay with the aggregator's operator.
    """
    hosts = host or ["localhost", "127.0.0.1"]
    try:
        subject_alt_names(hosts)  # before anything is written: a typo leaves no new CA behind
        reuse = (out / CA_CERT).exists() and not new_ca
        ca = load_ca(out) if reuse else make_dev_ca(out)
        server = make_server_cert(ca, out, hosts, days=days)
    except TLSSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"CA: {ca.cert_path} ({'reused' if reuse else 'new'})")
    typer.echo(f"server certificate: {server.cert_path} for {', '.join(server.hosts)}")
    typer.echo(f"server key: {server.key_path} (0600)")


@deploy_app.command("site-cert")
def site_cert(
    ca_dir: Annotated[Path, typer.Argument(help="Folder holding ca.pem and ca-key.pem.")],
    site: Annotated[
        str, typer.Option("--site", help="The site's registered name (the certificate's CN).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the certificate and key. Default: CA_DIR.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Validity in days.")] = 397,
) -> None:
    """Issue a site agent's client certificate (mutual TLS) signed by the CA in CA_DIR.

    Give the site site-NAME.pem and site-NAME-key.pem (FEDSEG_SITE_CLIENT_CERT / _KEY); start
    the aggregator with FEDSEG_AGG_SITE_CA_CERTS=CA_DIR/ca.pem to require them.
    """
    try:
        issued = make_site_cert(load_ca(ca_dir), out or ca_dir, site, days=days)
    except TLSSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"site certificate: {issued.cert_path} (CN={site})")
    typer.echo(f"site key: {issued.key_path} (0600)")
