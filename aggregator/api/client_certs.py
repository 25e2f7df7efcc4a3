"""Mutual TLS for site agents: the verified client certificate must name the authenticated site.

The TLS layer (``aggregator.http_server``, ``ssl_ca_certs`` = ``site_ca_certs``,
``CERT_OPTIONAL``) verifies a presented certificate against the sites' CA and reports it in the
ASGI TLS extension. Here the application checks that its subject CN is the name of the site
whose token came with the request (or whose enrollment token is being exchanged), so a stolen
site token is useless without that site's private key, and one site's certificate cannot act
for another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request

from aggregator.errors import AuthenticationError, PermissionDeniedError
from aggregator.settings import AggregatorSettings


def client_common_name(scope: Mapping[str, Any]) -> str | None:
    """The subject CN of the request's verified client certificate, or None without one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = x509.load_pem_x509_certificate(str(chain[0]).encode("ascii")).subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


def require_site_certificate(
    request: Request, settings: AggregatorSettings, *, site_name: str
) -> None:
    """Refuse a site request without a client certificate naming ``site_name`` (mTLS on).

    Does nothing while ``settings.site_ca_certs`` is None (mutual TLS off).

    Raises:
        AuthenticationError: no verified client certificate came with the request (401).
        PermissionDeniedError: the certificate names another site (403).
    """
    if settings.site_ca_certs is None:
        return
    name = client_common_name(request.scope)
    if name is None:
        raise AuthenticationError(
            "this aggregator requires the site's client certificate (mutual TLS): set "
            "FEDSEG_SITE_CLIENT_CERT and FEDSEG_SITE_CLIENT_KEY"
        )
    if name != site_name:
        raise PermissionDeniedError("the client certificate names another site than the token")
