#!/bin/sh
# A Debian bookworm base image with Python 3.11, made locally with debootstrap and imported into
# podman, for machines that cannot pull the official python:3.11-slim-bookworm image. The images
# build from it with `make images BASE_IMAGE=localhost/recsys-base:bookworm`.
#
#   images/base.sh [IMAGE]        (default localhost/recsys-base:bookworm; root, podman, debootstrap)
#
# Idempotent: nothing is done when the image exists (REBUILD=1 makes it again). The root file
# system is Debian's minbase variant plus python3, python3-venv (the build stage makes its
# venvs), ca-certificates (S3 over TLS) and util-linux (flock); security updates are applied;
# apt's lists, caches, docs, man pages and locales are removed.
set -eu

IMAGE="${1:-localhost/recsys-base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PACKAGES="python3,python3-venv,ca-certificates,util-linux"

say() { printf 'base-image: %s\n' "$*"; }

if [ "${REBUILD:-0}" != 1 ] && podman image exists "$IMAGE"; then
    say "$IMAGE exists (REBUILD=1 to make it again)"
    exit 0
fi
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { say "$tool is missing (apt-get install podman runc debootstrap)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }

root="$(mktemp -d "${TMPDIR:-/tmp}/recsys-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT INT TERM
start=$(date +%s)

say "debootstrap --variant=minbase $SUITE ($PACKAGES) from $MIRROR into $root"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

say "security updates ($SECURITY_MIRROR $SUITE-security)"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# dpkg: no docs, man pages or translations in this image or any image built from it
cat >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'NODOC'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
NODOC
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get -qq update && apt-get -qq -y upgrade >/dev/null && apt-get -qq clean'

say "removing apt lists, caches, docs, logs"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

say "python: $(chroot "$root" /usr/bin/python3 --version 2>&1)"
say "podman import -> $IMAGE"
tar --numeric-owner -C "$root" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --quiet --message "debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "$IMAGE: $((size / 1000000)) MB in $(( $(date +%s) - start )) s"
