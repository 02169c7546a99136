# The prediction service (api/, `recsys serve`): the core and the `serve` extra only (FastAPI,
# uvicorn, CatBoost, prometheus-client) from the locked environment; no Airflow, dbt, implicit or
# matplotlib. Built by `make images` (images/build.sh api):
#
#   podman build -f images/api.Dockerfile -t recsys-api:local --format docker .
#
# Run it with a read-only root file system: it writes only under /tmp (RECSYS_DATA_DIR) and the
# snapshot cache volume (RECSYS_API_CACHE_DIR). Listening on 0.0.0.0 needs API keys: mount them
# as a secret and name it with RECSYS_API_KEYS_FILE (or set RECSYS_API_ALLOW_NO_AUTH=true when
# something in front checks callers). The lake: RECSYS_LAKE_URI (a mounted folder, or s3://...
# with AWS_ENDPOINT_URL and the AWS_*_FILE secrets).

# the official slim image by default; where registries cannot be reached, images/base.sh makes
# one locally (localhost/recsys-base:bookworm). Both stages use it: the venv's interpreter is the
# base's own python3.11.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the base is this build argument, its default pinned above (checkov reads FROM ${BASE_IMAGE} as untagged)

FROM ${BASE_IMAGE} AS build
# uv as the host pins it (its cache format and lock reading match the host's)
ARG UV_VERSION=0.13.9
# where uv keeps downloaded wheels: the cache mount below, or the host's uv cache that
# images/build.sh mounts with --volume (no second download of the locked wheels)
ARG UV_CACHE_DIR=/root/.cache/uv
ENV UV_CACHE_DIR=${UV_CACHE_DIR} \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON=python3.11 \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
# the locked dependencies first (a layer that changes only with the lock), then the project
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --no-install-project --extra serve
COPY README.md ./
COPY recsys/ recsys/
COPY api/ api/
# --refresh-package: the project's wheel is built again, never taken from the cache (uv keys a
# local project's wheel on pyproject.toml, so another image's build would hand over its wheel,
# with that image's packages).
# --no-editable: the project goes into the venv as a wheel (the core and api/ only), so the
# final stage needs /opt/venv and nothing else
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --refresh-package recsys --extra serve \
    && /opt/venv/bin/python -c 'import api.main' \
    && /opt/venv/bin/recsys --help >/dev/null
# the test suites of the biggest libraries (~100 MB; nothing imports them at run time)
RUN for package in numpy pandas pyarrow scipy; do \
        dir="/opt/venv/lib/python3.11/site-packages/$package"; \
        if [ -d "$dir" ]; then find "$dir" -depth -type d -name tests -exec rm -rf {} +; fi; \
    done

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="recsys-api" \
      org.opencontainers.image.description="The recommender's prediction service (recsys serve)"
# no build tools, no uv, no pip cache: a user, the cache folder and the environment
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin recsys \
    && install -d -o 10001 -g 10001 -m 0750 /var/cache/recsys
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RECSYS_DATA_DIR=/tmp/recsys \
    RECSYS_API_CACHE_DIR=/var/cache/recsys \
    RECSYS_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz
# local copies of snapshots (a volume: the root file system stays read-only)
VOLUME ["/var/cache/recsys"]
USER 10001:10001
EXPOSE 8000
# liveness (the readiness of a snapshot is /readyz, for the orchestrator's probes);
# RECSYS_HEALTHCHECK_URL follows a changed --port
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RECSYS_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["recsys"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
