"""``/experiments``: create, read, initial model, start/pause/abort, rounds, models, grants, routing bundle."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from aggregator.api.deps import (
    BlobsDep,
    CurrentResearcher,
    CurrentSite,
    MetricsDep,
    ServicesDep,
    SessionDep,
)
from aggregator.api.uploads import (
    BUNDLE_BODY,
    UPLOAD_RESPONSES,
    content_length,
    receive_upload,
    sha256_header,
)
from aggregator.crud import experiments as exp_crud
from aggregator.crud import rounds as round_crud
from aggregator.crud import routing as routing_crud
from aggregator.errors import NotFoundError, PermissionDeniedError
from aggregator.privacy.adaptive_clipping import clip_norms
from aggregator.privacy.privacy_budget import with_privacy
from aggregator.rounds.lifecycle import (
    abort_experiment,
    create_experiment,
    pause_experiment,
    set_initial_model,
    start_experiment,
)
from aggregator.rounds.planning import federation_class_prior
from aggregator.rounds.validation import check_model
from aggregator.storage.db import ExperimentStatus
from aggregator.storage.routing_bundle import Expert
from data_specs.constants import HEADER_SHA256
from data_specs.researcher import (
    ExperimentCreate,
    ExperimentPublic,
    GrantCreate,
    GrantPublic,
    RoundPublic,
)
from data_specs.weights.bundle import MAX_ROUND

router = APIRouter(prefix="/experiments", tags=["experiments"])
_OCTET = "application/octet-stream"


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    body: ExperimentCreate,
    session: SessionDep,
    services: ServicesDep,
    researcher: CurrentResearcher,
) -> ExperimentPublic:
    """Create an experiment (status ``created``); the spec's bounds are in its schema, and its
    parameter count (computed by arithmetic, nothing is built) must not exceed the server's
    ``max_model_parameters``."""
    experiment = create_experiment(
        session,
        owner_id=researcher.id,
        body=body,
        max_parameters=services.settings.max_model_parameters,
    )
    return exp_crud.to_public(experiment)


@router.get("")
def list_all(session: SessionDep, researcher: CurrentResearcher) -> list[ExperimentPublic]:
    """The caller's experiments, newest first."""
    return [
        exp_crud.to_public(e) for e in exp_crud.list_experiments(session, owner_id=researcher.id)
    ]


@router.get("/{experiment_id}")
def read(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> ExperimentPublic:
    """One of the caller's experiments."""
    return exp_crud.to_public(
        exp_crud.get_experiment(session, experiment_id=experiment_id, owner_id=researcher.id)
    )


@router.put("/{experiment_id}/initial-model", openapi_extra=BUNDLE_BODY, responses=UPLOAD_RESPONSES)
async def put_initial_model(
    experiment_id: str, request: Request, services: ServicesDep, researcher: CurrentResearcher
) -> ExperimentPublic:
    """Upload the initial weights (a full bundle of the spec) before the experiment starts."""
    sha = sha256_header(request)
    length = content_length(request, limit=services.settings.max_upload_bytes)

    def check_owner() -> tuple[str, dict[str, tuple[tuple[int, ...], str]]]:
        with services.database.session() as session:
            experiment = exp_crud.get_experiment(
                session, experiment_id=experiment_id, owner_id=researcher.id
            )
            exp_crud.require_status(
                experiment, ExperimentStatus.CREATED, action="set the initial model of"
            )
            return experiment.spec_hash, exp_crud.expected_of(experiment)

    spec_hash, expected = await run_in_threadpool(check_owner)
    staged = await receive_upload(
        request, services=services, site_key=researcher.id, length=length, sha256=sha
    )

    def store() -> ExperimentPublic:
        check_model(staged.path, spec_hash=spec_hash, expected=expected)
        with services.database.session() as session:
            experiment = exp_crud.get_experiment(
                session, experiment_id=experiment_id, owner_id=researcher.id
            )
            set_initial_model(
                session,
                blobs=services.blobs,
                experiment=experiment,
                checked_path=staged.path,
                actor=researcher.actor,
            )
            return exp_crud.to_public(experiment)

    try:
        public = await run_in_threadpool(store)
    finally:
        staged.discard()
    services.metrics.bytes_in.labels(kind="initial_model").inc(length)
    return public


@router.post("/{experiment_id}/start")
def start(
    experiment_id: str, session: SessionDep, services: ServicesDep, researcher: CurrentResearcher
) -> ExperimentPublic:
    """Start a created experiment (builds the initial model from the spec and seed if none was
    uploaded), or resume a paused one."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    sites = start_experiment(
        session,
        blobs=services.blobs,
        experiment=experiment,
        actor=researcher.actor,
        require_consent=services.settings.require_consent,
    )
    services.orchestrator.wake()
    services.board.notify_threadsafe(sites)
    return exp_crud.to_public(experiment)


@router.post("/{experiment_id}/pause")
def pause(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> ExperimentPublic:
    """Pause a running experiment: no tasks are handed out, deadlines stop."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    pause_experiment(session, experiment=experiment, actor=researcher.actor)
    return exp_crud.to_public(experiment)


@router.post("/{experiment_id}/abort")
def abort(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> ExperimentPublic:
    """Abort an experiment for good; open tasks are cancelled and uploads refused."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    abort_experiment(session, experiment=experiment, actor=researcher.actor)
    return exp_crud.to_public(experiment)


@router.get("/{experiment_id}/rounds")
def rounds(
    experiment_id: str, session: SessionDep, researcher: CurrentResearcher
) -> list[RoundPublic]:
    """Every round attempt: sampled sites, per-site status, sample counts, metrics, bytes, reasons,
    and for DP experiments the (ε, δ) spent by each closed round and by all rounds up to it."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    listed = round_crud.list_rounds(session, experiment_id=experiment_id)
    clips = clip_norms(session, experiment_id=experiment_id)
    return with_privacy(listed, exp_crud.config_of(experiment), experiment.participants, clips)


@router.get("/{experiment_id}/rounds/{round_number}/model", response_class=FileResponse)
def round_model(
    experiment_id: str,
    round_number: Annotated[int, Path(ge=0, le=MAX_ROUND, description="0: the initial model")],
    session: SessionDep,
    blobs: BlobsDep,
    metrics: MetricsDep,
    researcher: CurrentResearcher,
) -> FileResponse:
    """The global model after round ``round_number`` (0: initial), with ``X-Content-SHA256``."""
    exp_crud.get_experiment(session, experiment_id=experiment_id, owner_id=researcher.id)
    model = round_crud.get_global_model(
        session, experiment_id=experiment_id, round_number=round_number
    )
    metrics.bytes_out.labels(kind="round_model").inc(model.size)
    return FileResponse(
        blobs.require(model.sha256),
        media_type=_OCTET,
        headers={HEADER_SHA256: model.sha256},
        filename=f"{experiment_id}_round_{round_number}.safetensors",
    )


@router.post("/{experiment_id}/grants", status_code=status.HTTP_201_CREATED)
def grant(
    experiment_id: str, body: GrantCreate, session: SessionDep, researcher: CurrentResearcher
) -> GrantPublic:
    """Let a (typically outside) site download the routing bundle."""
    experiment = exp_crud.get_experiment(
        session, experiment_id=experiment_id, owner_id=researcher.id
    )
    row, site_name = routing_crud.grant_routing(
        session, experiment=experiment, site_id=body.site_id, researcher_id=researcher.id
    )
    session.commit()
    return GrantPublic(
        experiment_id=experiment.id,
        site_id=row.site_id,
        site_name=site_name,
        created_at=row.created_at,
    )


@router.get("/{experiment_id}/routing-bundle", response_class=FileResponse)
def routing_bundle(
    experiment_id: str, session: SessionDep, services: ServicesDep, site: CurrentSite
) -> FileResponse:
    """Global model + latest shared personal models in one file (granted sites and participants)."""
    experiment = exp_crud.get_experiment(session, experiment_id=experiment_id)
    if not routing_crud.may_fetch_routing(session, experiment=experiment, site_id=site.id):
        raise PermissionDeniedError(
            f"site has no grant for the routing bundle of experiment {experiment_id}"
        )
    latest = round_crud.latest_global_model(session, experiment_id=experiment_id)
    if latest is None:
        raise NotFoundError(f"experiment {experiment_id} has no global model yet")
    experts = [Expert(latest.sha256, "global", "global", latest.round)]
    experts += [
        Expert(p.sha256, "site", name, p.round)
        for p, name in routing_crud.latest_personal_models(session, experiment_id=experiment_id)
    ]
    # The federation's class shares (aggregate fingerprints) guide the outside adaptation's
    # foreground prior; absent when a participant sent no fingerprint.
    prior = federation_class_prior(session, experiment_id=experiment_id)
    session.commit()
    cfg = exp_crud.config_of(experiment)
    ref = services.routing.get(
        spec=cfg.spec, experts=experts, class_prior=prior, class_names=cfg.class_names
    )
    services.metrics.bytes_out.labels(kind="routing_bundle").inc(ref.size)
    return FileResponse(
        services.blobs.require(ref.sha256),
        media_type=_OCTET,
        headers={HEADER_SHA256: ref.sha256},
        filename=f"{experiment_id}_routing.safetensors",
    )
