#!/bin/sh
# Build one of the project's images with podman:
#
#   images/build.sh NAME [BASE_IMAGE]     NAME: api | monitoring | pipeline -> recsys-NAME:local
#
# BASE_IMAGE defaults to the official docker.io/library/python:3.11-slim-bookworm (fully
# qualified: podman refuses ambiguous short names); where registries cannot be reached,
# images/base.sh makes localhost/recsys-base:bookworm. TAG overrides the tag.
# - --format docker: the OCI format has no HEALTHCHECK; podman keeps it only in Docker's format;
# - --network host: the build's downloads (PyPI) go out as the host's do, never through
#   podman's bridge network;
# - the host's uv cache (UV_CACHE_DIR, else `uv cache dir`) is mounted into the build, so the
#   locked wheels are not downloaded again (NO_HOST_CACHE=1: the Dockerfile's own cache mount);
# - the host's CA bundle (BUILD_CA_BUNDLE, else SSL_CERT_FILE, when set) replaces the base's
#   during the build's RUN steps only, for networks that intercept TLS; it is not in the image.
set -eu

name="${1:?usage: images/build.sh api|monitoring|pipeline [BASE_IMAGE]}"
base="${2:-${BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}}"
tag="${TAG:-recsys-$name:local}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="$root/images/$name.Dockerfile"
[ -f "$dockerfile" ] || { echo "build: no $dockerfile" >&2; exit 2; }

set -- --file "$dockerfile" --tag "$tag" --build-arg "BASE_IMAGE=$base" \
    --format docker --network host --layers
if [ "${NO_HOST_CACHE:-0}" != 1 ]; then
    cache="${UV_CACHE_DIR:-}"
    if [ -z "$cache" ]; then
        cache="$(uv cache dir 2>/dev/null || python3 -m uv cache dir 2>/dev/null || true)"
    fi
    if [ -n "$cache" ]; then
        mkdir -p "$cache"
        set -- "$@" --volume "$cache:/uv-cache" --build-arg UV_CACHE_DIR=/uv-cache
    fi
fi
ca="${BUILD_CA_BUNDLE:-${SSL_CERT_FILE:-}}"
if [ -n "$ca" ] && [ -f "$ca" ]; then
    set -- "$@" --volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro"
fi

echo "build: $tag from $base ($dockerfile)"
start=$(date +%s)
podman build "$@" "$root"
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "build: $tag in $(( $(date +%s) - start )) s, $((size / 1000000)) MB"
