# syntax=docker/dockerfile:1
# fedseg site agent: trains on a hospital's scans and talks to the aggregator over outbound
# HTTPS only (no port is published). Build from the repository root:
#   docker build -f deploy/site_agent.Dockerfile -t fedseg-site-agent .
# CUDA build (needs the NVIDIA container toolkit on the host, then `docker run --gpus all`;
# pick a cuXYZ index that torch 2.13.0 is published for and the host's driver supports):
#   docker build -f deploy/site_agent.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t fedseg-site-agent:cuda .
# Mounts: scans read-only at /data, the work dir (token, state, models) as a volume at /work,
# the CA bundle at /certs/ca.pem. Tokens come from the environment or a secret file, never
# from the image. Every variable is described in docs/hospital-it.md.

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
    && fedseg site run --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedseg site agent" \
      org.opencontainers.image.description="Federated segmentation site agent (outbound HTTPS only)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fedseg \
    && useradd --system --uid 10001 --gid fedseg --home-dir /work --shell /usr/sbin/nologin fedseg \
    && mkdir -p /work /data /certs \
    && chown fedseg:fedseg /work
COPY --from=build /opt/fedseg /opt/fedseg
ENV PATH=/opt/fedseg/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEDSEG_SITE_WORK_DIR=/work \
    FEDSEG_SITE_MANIFEST=/data/dataset.json
# /data: the hospital's scans and dataset.json, mounted read-only (-v /scans:/data:ro).
# /work: site token (0600), task state, global/personal models; must survive upgrades.
VOLUME ["/work"]
USER 10001:10001
WORKDIR /work
HEALTHCHECK --interval=60s --timeout=20s --start-period=30s --retries=3 \
    CMD ["python", "-m", "deploy.entrypoints.healthcheck", "site"]
ENTRYPOINT ["fedseg", "site"]
CMD ["run"]
