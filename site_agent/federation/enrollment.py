"""Enrollment: the one-time enrollment token becomes a site token kept in the work dir (0600).

``FEDSEG_SITE_ENROLLMENT_TOKEN=-`` reads the token from standard input (one line) at the moment
the agent enrolls, as ``docker login --password-stdin`` does: the token then never sits in the
process's environment, and a launcher can start the agent before the site is registered. The
agent does its start-up work (imports, data checks, work dir) meanwhile and enrolls as soon as
the line arrives.
"""

from __future__ import annotations

import logging
import sys

from pydantic import SecretStr

from data_specs.errors import DataSpecError
from data_specs.manifests.manifest import load_manifest
from data_specs.wire import EnrollResponse
from site_agent.errors import SiteSettingsError
from site_agent.federation.client import AggregatorClient
from site_agent.federation.workdir import WorkDir
from site_agent.settings import SiteSettings

log = logging.getLogger(__name__)


def enroll(client: AggregatorClient, settings: SiteSettings, workdir: WorkDir) -> EnrollResponse:
    """Exchange the configured enrollment token for a site token and keep it (0600, atomic).

    Args:
        client: the aggregator client; it uses the new token from then on.
        settings: holds ``enrollment_token``.
        workdir: where ``site_token`` is written.

    Raises:
        SiteSettingsError: no enrollment token is configured.
        EnrollmentError: the aggregator refused it (used, unknown or revoked).
    """
    if settings.enrollment_token is None:
        raise SiteSettingsError(
            "no site token yet and no enrollment token: set FEDSEG_SITE_ENROLLMENT_TOKEN "
            "(from the researcher) for the first start"
        )
    token = settings.enrollment_token
    if token.get_secret_value() == STDIN_TOKEN:
        token = read_stdin_token()
    response = client.enroll(
        token,
        accept_experiments=list(settings.accept_experiments) or None,
        max_samples=declared_max_samples(settings),
    )
    token = SecretStr(response.site_token)
    workdir.write_token(token)
    client.set_token(token)
    log.info("enrolled as site %s (%s)", response.site_name, response.site_id)
    return response


STDIN_TOKEN = "-"
"""The ``enrollment_token`` value that means "read it from standard input"."""


def read_stdin_token() -> SecretStr:
    """One line of standard input: the enrollment token (waits until it arrives).

    Raises:
        SiteSettingsError: standard input closed without a token.
    """
    line = sys.stdin.readline().strip()
    if not line:
        raise SiteSettingsError(
            "FEDSEG_SITE_ENROLLMENT_TOKEN is '-' but standard input closed without a token"
        )
    return SecretStr(line)


def declared_max_samples(settings: SiteSettings) -> int | None:
    """The sample-count cap declared at enrolment (``FEDSEG_SITE_MAX_SAMPLES``, else derived).

    Derived only for a 3D task, whose sample count is its number of training cases; a 2D task
    trains on slices when its scans are volumes, so it declares nothing. A manifest that is
    missing or does not load declares nothing (the agent reports it when it trains).
    """
    if settings.max_samples is not None:
        return settings.max_samples
    if settings.manifest is None:
        return None
    try:
        manifest = load_manifest(settings.manifest)
    except (DataSpecError, OSError) as exc:
        log.warning(
            "no sample count declared at enrolment: the manifest did not load (%s)",
            type(exc).__name__,
        )
        return None
    if manifest.spatial_dims != 3 or not manifest.training:
        return None
    return len(manifest.training)


def ensure_token(client: AggregatorClient, settings: SiteSettings, workdir: WorkDir) -> None:
    """Give ``client`` a site token: the configured one, the kept one, or a new enrollment.

    Raises:
        SiteSettingsError: no token of any kind is available.
        EnrollmentError: the enrollment token was refused.
    """
    token = settings.site_token or workdir.read_token()
    if token is None:
        enroll(client, settings, workdir)
    else:
        client.set_token(token)
        if settings.accept_experiments:  # the hospital's standing consent, as configured now
            client.set_consent_policy(list(settings.accept_experiments))
