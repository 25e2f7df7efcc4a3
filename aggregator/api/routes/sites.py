"""``/sites``: researchers register, list, rotate and revoke sites; agents enroll."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from aggregator import consent
from aggregator.api.client_certs import require_site_certificate
from aggregator.api.deps import CurrentResearcher, CurrentSite, SessionDep, SettingsDep
from aggregator.crud import principals
from data_specs.researcher import SiteCreate, SitePublic, SiteRegistered
from data_specs.researcher.consent import ConsentPolicy
from data_specs.wire import EnrollRequest, EnrollResponse

router = APIRouter(prefix="/sites", tags=["sites"])


@router.post("/enroll")
def enroll(
    body: EnrollRequest, session: SessionDep, request: Request, settings: SettingsDep
) -> EnrollResponse:
    """Exchange a one-time enrollment token for a site token (no bearer token needed).

    With mutual TLS on, the client certificate must name the site (else nothing is spent).
    """
    site, token = principals.enroll_site(
        session, enrollment_token=body.enrollment_token, max_samples=body.max_samples
    )
    require_site_certificate(request, settings, site_name=site.name)
    if body.accept_experiments is not None:
        consent.set_policy(session, site=site, accept=body.accept_experiments)
    session.commit()
    return EnrollResponse(site_id=site.id, site_name=site.name, site_token=token)


@router.put("/me/consent-policy")
def put_consent_policy(
    body: ConsentPolicy, session: SessionDep, current: CurrentSite
) -> ConsentPolicy:
    """Replace the calling site's standing consent (its agent's ``accept_experiments``)."""
    site = principals.get_site(session, site_id=current.id)
    consent.set_policy(session, site=site, accept=body.accept)
    session.commit()
    return body


@router.post("", status_code=status.HTTP_201_CREATED)
def register_site(
    body: SiteCreate, session: SessionDep, researcher: CurrentResearcher
) -> SiteRegistered:
    """Register a site; the enrollment token is shown this once."""
    site, token = principals.register_site(session, name=body.name, researcher_id=researcher.id)
    session.commit()
    return SiteRegistered(id=site.id, name=site.name, enrollment_token=token)


@router.get("")
def list_sites(session: SessionDep, _researcher: CurrentResearcher) -> list[SitePublic]:
    """Every site with its status and when it was last seen."""
    return [SitePublic.model_validate(s) for s in principals.list_sites(session)]


@router.post("/{site_id}/rotate")
def rotate_site(site_id: str, session: SessionDep, researcher: CurrentResearcher) -> SiteRegistered:
    """Revoke the site token and issue a new enrollment token (registering researcher only)."""
    site, token = principals.rotate_site(session, site_id=site_id, researcher_id=researcher.id)
    session.commit()
    return SiteRegistered(id=site.id, name=site.name, enrollment_token=token)


@router.post("/{site_id}/revoke")
def revoke_site(site_id: str, session: SessionDep, researcher: CurrentResearcher) -> SitePublic:
    """Revoke the site token (registering researcher only)."""
    site = principals.revoke_site(session, site_id=site_id, researcher_id=researcher.id)
    session.commit()
    return SitePublic.model_validate(site)
