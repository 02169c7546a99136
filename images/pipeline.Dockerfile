# The pipeline (models_ml/, dbt_project/, dags/, and `recsys monitor`): the core with the `train`,
# `orchestrate` and `monitor` extras (dbt-duckdb, implicit, CatBoost, matplotlib, Airflow,
# Cosmos) from the locked environment, the dbt project and the DAGs. One image for the batch
# steps (`recsys ingest|build|train|evaluate|publish|run|monitor`) and for Airflow
# (`--entrypoint airflow`, e.g. `standalone`, or `api-server` and `scheduler`). Built by
# `make images` (images/build.sh pipeline):
#
#   podman build -f images/pipeline.Dockerfile -t recsys-pipeline:local --format docker .
#
# Run it with a read-only root file system: it writes the warehouse, the models, the reports
# and Airflow's home under RECSYS_DATA_DIR (/var/lib/recsys, a volume; one writer at a time)
# and scratch files under /tmp. The lake: RECSYS_LAKE_URI (s3://... with AWS_ENDPOINT_URL and the
# AWS_*_FILE secrets). The dbt manifest the DAGs render from is made at build time.

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
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --no-install-project \
        --extra train --extra orchestrate --extra monitor
COPY README.md ./
COPY recsys/ recsys/
COPY models_ml/ models_ml/
COPY monitoring/ monitoring/
# --refresh-package: the project's wheel is built again, never taken from the cache (uv keys a
# local project's wheel on pyproject.toml, so another image's build would hand over its wheel,
# with that image's packages).
# --no-editable: the project goes into the venv as a wheel (the core, models_ml/ and
# monitoring/), so the final stage needs /opt/venv and /opt/recsys and nothing else
RUN --mount=type=cache,target=/root/.cache/uv \
    /opt/uv/bin/uv sync --frozen --no-dev --no-editable --refresh-package recsys \
        --extra train --extra orchestrate --extra monitor \
    && /opt/venv/bin/python -c 'import models_ml.pipeline, monitoring.run' \
    && /opt/venv/bin/recsys --help >/dev/null
# the test suites of the biggest libraries (~100 MB; nothing imports them at run time)
RUN for package in numpy pandas pyarrow scipy; do \
        dir="/opt/venv/lib/python3.11/site-packages/$package"; \
        if [ -d "$dir" ]; then find "$dir" -depth -type d -name tests -exec rm -rf {} +; fi; \
    done
COPY dbt_project/ /opt/recsys/dbt_project/
COPY dags/ /opt/recsys/dags/
# the manifest the DAGs render their dbt tasks from (`dbt parse`, as `make airflow` does):
# made here, so that nothing is written next to the DAGs at run time
RUN mkdir -p /tmp/build-data \
    && RECSYS_DATA_DIR=/tmp/build-data AIRFLOW_HOME=/tmp/build-data/airflow \
        RECSYS_DBT_PROJECT_DIR=/opt/recsys/dbt_project PYTHONPATH=/opt/recsys/dags \
        AIRFLOW__COSMOS__ENABLE_TELEMETRY=False \
        /opt/venv/bin/python -m recsys_airflow.dbt_graph /tmp/build-data/manifest \
    && install -D -m 0644 /tmp/build-data/manifest/manifest.json /opt/recsys/dbt_manifest/manifest.json \
    && rm -rf /tmp/build-data

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="recsys-pipeline" \
      org.opencontainers.image.description="The recommender's pipeline: ingest, dbt, ALS, CatBoost, publishing, monitoring jobs, Airflow"
# no build tools, no uv, no pip cache: a user, the data folder and the environment
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin recsys \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/recsys
# implicit's ALS is built with OpenMP: its runtime is the one system package the pipeline adds
# (Debian bookworm's, pinned; neither the slim image nor the local base has it)
ARG LIBGOMP_VERSION=12.2.0-14+deb12u1
RUN apt-get update \
    && apt-get install -y --no-install-recommends "libgomp1=${LIBGOMP_VERSION}" \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/recsys /opt/recsys
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/recsys/dags \
    HOME=/tmp \
    OPENBLAS_NUM_THREADS=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    RECSYS_DATA_DIR=/var/lib/recsys \
    RECSYS_DBT_PROJECT_DIR=/opt/recsys/dbt_project \
    RECSYS_DBT_MANIFEST=/opt/recsys/dbt_manifest/manifest.json \
    DBT_TARGET_PATH=/tmp/dbt/target \
    DBT_LOG_PATH=/tmp/dbt/logs \
    AIRFLOW_HOME=/var/lib/recsys/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recsys/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False \
    AIRFLOW__COSMOS__CACHE_DIR=/tmp/cosmos
# the warehouse, models, reports and Airflow's home (a volume: the root file system stays
# read-only)
VOLUME ["/var/lib/recsys"]
USER 10001:10001
# Airflow's API server and UI, when the image runs Airflow
EXPOSE 8080
# the environment imports and the command line answers (a batch step has nothing to probe;
# an Airflow container is better probed on /api/v2/monitor/health, as compose.yaml does)
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
    CMD ["recsys", "--help"]
ENTRYPOINT ["recsys"]
CMD ["--help"]
