# The monitoring service (monitoring/, `recsys monitor serve`): the core and the `monitor` extra
# only (FastAPI, uvicorn, prometheus-client) from the locked environment. It reads the lake's
# latest monitoring export and records Alertmanager's notifications in the lake. Built by
# `make images` (images/build.sh monitoring):
#
#   podman build -f images/monitoring.Dockerfile -t recsys-monitoring:local --format docker .
#
# Run it with a read-only root file system: it writes only under /tmp. The lake: RECSYS_LAKE_URI
# (s3://... with AWS_ENDPOINT_URL and the AWS_*_FILE secrets, or a mounted folder); the webhook's
# bearer token: RECSYS_MONITORING_WEBHOOK_TOKEN_FILE (a mounted secret, the one Alertmanager's
# configuration names).

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
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --no-install-project --extra monitor
COPY README.md ./
COPY recsys/ recsys/
COPY monitoring/ monitoring/
# --refresh-package: the project's wheel is built again, never taken from the cache (uv keys a
# local project's wheel on pyproject.toml, so another image's build would hand over its wheel,
# with that image's packages).
# --no-editable: the project goes into the venv as a wheel (the core and monitoring/ only), so
# the final stage needs /opt/venv and nothing else
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --refresh-package recsys --extra monitor \
    && /opt/venv/bin/python -c 'import monitoring.service' \
    && /opt/venv/bin/recsys monitor --help >/dev/null
# the test suites of the biggest libraries (~100 MB; nothing imports them at run time)
RUN for package in numpy pandas pyarrow scipy; do \
        dir="/opt/venv/lib/python3.11/site-packages/$package"; \
        if [ -d "$dir" ]; then find "$dir" -depth -type d -name tests -exec rm -rf {} +; fi; \
    done

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="recsys-monitoring" \
      org.opencontainers.image.description="The recommender's monitoring service (recsys monitor serve)"
# no build tools, no uv, no pip cache: a user and the environment
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin recsys
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RECSYS_DATA_DIR=/tmp/recsys \
    RECSYS_HEALTHCHECK_URL=http://127.0.0.1:8001/healthz
USER 10001:10001
EXPOSE 8001
# liveness (/readyz says whether an export is loaded, for the orchestrator's probes);
# RECSYS_HEALTHCHECK_URL follows a changed --port
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RECSYS_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["recsys"]
CMD ["monitor", "serve", "--host", "0.0.0.0", "--port", "8001"]
