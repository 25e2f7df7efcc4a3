"""Which certificate authorities the site agent trusts: the system store plus FEDSEG_SITE_CA_BUNDLE.

Hospitals often inspect outbound TLS with their own CA, installed in the operating system's trust
store (``update-ca-certificates``, or built into the image from ``deploy/extra-ca/``). The
aggregator may use a private CA (``fedseg deploy certs``), given as ``FEDSEG_SITE_CA_BUNDLE``.
The agent trusts both, so either set-up, or both at once, verifies. Python's default paths honour
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``; where the system store is empty (some minimal images),
certifi's bundle stands in for it.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def agent_ssl_context(
    ca_bundle: str | Path | None = None,
    *,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+, host names checked) over the system store and ``ca_bundle``.

    Args:
        ca_bundle: extra PEM file of CA certificates, e.g. the aggregator's private CA. Default
            None (the system store only). Example: ``"/certs/ca.pem"``.
        client_cert: the site's client certificate for mutual TLS (PEM). Default None.
        client_key: its private key (PEM). Default None.

    Raises:
        OSError: a file cannot be read. ssl.SSLError: no PEM certificate, or a key that does
            not match the certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ctx.cert_store_stats()["x509_ca"] == 0:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        ctx.load_verify_locations(cafile=str(ca_bundle))
    if client_cert is not None:
        ctx.load_cert_chain(
            certfile=str(client_cert), keyfile=str(client_key) if client_key else None
        )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
