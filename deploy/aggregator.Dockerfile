# syntax=docker/dockerfile:1
# fedseg aggregator: the FastAPI service that runs federated rounds (HTTPS on 8443).
# Build from the repository root:
#   docker build -f deploy/aggregator.Dockerfile -t fedseg-aggregator .
# The aggregator needs no GPU; TORCH_INDEX_URL only exists to match the site agent's build.
# Secrets are never baked in: the admin token and the TLS key are given at run time.
# Every variable is described in docs/hospital-it.md and deploy/.env.example.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/fedseg/bin:$PATH
RUN python -m venv /opt/fedseg \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY data_specs ./data_specs
COPY personalization ./personalization
COPY site_agent ./site_agent
COPY aggregator ./aggregator
COPY deploy ./deploy
RUN pip install . \
    && fedseg aggregator serve --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedseg aggregator" \
      org.opencontainers.image.description="Federated segmentation aggregator (FastAPI, HTTPS)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fedseg \
    && useradd --system --uid 10001 --gid fedseg --home-dir /work --shell /usr/sbin/nologin fedseg \
    && mkdir -p /work /certs \
    && chown fedseg:fedseg /work
COPY --from=build /opt/fedseg /opt/fedseg
ENV PATH=/opt/fedseg/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEDSEG_AGG_HOST=0.0.0.0 \
    FEDSEG_AGG_PORT=8443 \
    FEDSEG_AGG_DATA_DIR=/work
# /work: SQLite database and the content-addressed blob store (keep it on a volume).
# /certs: server.pem and server-key.pem, mounted read-only. The admin token is given at run time:
# FEDSEG_AGG_ADMIN_TOKEN_FILE=/run/secrets/admin_token (a Docker secret) or FEDSEG_AGG_ADMIN_TOKEN.
VOLUME ["/work"]
USER 10001:10001
WORKDIR /work
EXPOSE 8443
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "deploy.entrypoints.healthcheck", "aggregator"]
ENTRYPOINT ["fedseg", "aggregator", "serve"]
# HTTPS by default. Behind a TLS-terminating proxy give another command (e.g. `--port 8080`)
# and set FEDSEG_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz.
CMD ["--ssl-certfile", "/certs/server.pem", "--ssl-keyfile", "/certs/server-key.pem"]
