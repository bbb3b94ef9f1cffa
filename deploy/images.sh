#!/usr/bin/env bash
# Builds the images of the compose stack (deploy/docker-compose.yml), with podman or Docker.
#
#   deploy/images.sh                      every image: base, linepulse, kafka, mosquitto,
#                                         prometheus, alertmanager
#   deploy/images.sh linepulse kafka      only those
#   deploy/images.sh --offline            LinePulse on the Debian base too: no image registry
#                                         is asked for anything (only Debian's and PyPI's
#                                         package archives are needed)
#
# Images, all tagged localhost/...:
#   linepulse-debian:bookworm   a minimal Debian made by debootstrap with python3 (cached as a
#                               tarball; needs root and debootstrap). Base of the stand-ins,
#                               and of LinePulse with --offline.
#   linepulse:latest            ../Dockerfile; its base is python:3.11-slim from Docker Hub
#                               unless --offline (or LINEPULSE_BASE names another).
#   linepulse-kafka, -mosquitto, -prometheus, -alertmanager
#                               deploy/images/Containerfile: Kafka from the project's Maven jars
#                               (deploy/kafka/kafka.sh fetch) on OpenJDK 17, the others from
#                               Debian's packages.
#
# Environment:
#   ENGINE          podman or docker (default: podman if found, else docker)
#   IMAGE_CACHE     where the debootstrap tarball is kept (default ~/.cache/linepulse/images)
#   DEBIAN_MIRROR   default http://deb.debian.org/debian
#   DEBIAN_SUITE    default bookworm (its python3 is 3.11, as the official base's)
#   LINEPULSE_BASE  base image of linepulse:latest (overrides --offline's choice)
#   CA_BUNDLE       CA certificates for the pip install in the LinePulse build, given to it
#                   as the build secret `ca-bundle` (default: the host's bundle, which holds
#                   a TLS-intercepting proxy's CA where the host trusts one)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${IMAGE_CACHE:-${HOME:-/root}/.cache/linepulse/images}"
DEBIAN_IMAGE="localhost/linepulse-debian:$SUITE"
# What the base holds besides minbase: the LinePulse image's python3 and venv, and the
# certificates every HTTPS download in a build needs.
BASE_PACKAGES="python3,python3-venv,ca-certificates"
STANDINS=(kafka mosquitto prometheus alertmanager)
OFFLINE=0

die() {
    echo "images.sh: $*" >&2
    exit 1
}

say() {
    echo "images.sh: $*" >&2
}

engine() {
    if [[ -n "${ENGINE:-}" ]]; then
        command -v "$ENGINE" >/dev/null 2>&1 || die "ENGINE=$ENGINE not found"
        echo "$ENGINE"
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    elif command -v docker >/dev/null 2>&1; then
        echo docker
    else
        die "neither podman nor docker found (Debian: apt-get install podman)"
    fi
}

has_image() {
    "$ENGINE_BIN" image inspect "$1" >/dev/null 2>&1
}

# The Debian base: debootstrap into a scratch folder, packed as a tarball under $CACHE (kept
# for the next build: the name carries the suite and the package list), imported as an image.
build_base() {
    local key tarball root started=$SECONDS
    key="$(printf '%s %s %s' "$SUITE" "$MIRROR" "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
    tarball="$CACHE/debian-$SUITE-$key.tar"
    if [[ ! -s "$tarball" ]]; then
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (Debian: apt-get install debootstrap)"
        [[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root to build the Debian base"
        mkdir -p "$CACHE"
        root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
        say "debootstrap $SUITE from $MIRROR into $root (a minute or two)"
        if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1; then
            tail -n 20 "$CACHE/debootstrap.log" >&2
            rm -rf "$root"
            die "debootstrap failed (log: $CACHE/debootstrap.log)"
        fi
        # An image needs no package cache nor the lists (each build runs apt-get update).
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$tarball.tmp" .
        mv -f "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    "$ENGINE_BIN" import --change 'CMD ["/bin/bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
    say "$DEBIAN_IMAGE ready ($((SECONDS - started)) s)"
}

need_base() {
    if ! has_image "$DEBIAN_IMAGE"; then
        build_base
    fi
}

build_linepulse() {
    local base="${LINEPULSE_BASE:-}" started=$SECONDS
    if [[ -z "$base" && "$OFFLINE" -eq 1 ]]; then
        need_base
        base="$DEBIAN_IMAGE"
    fi
    local args=()
    if [[ -n "$base" ]]; then
        args+=(--build-arg "BASE=$base")
    fi
    local bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
    if [[ -s "$bundle" ]]; then
        args+=(--secret "id=ca-bundle,src=$bundle")
    fi
    say "linepulse:latest from ${base:-python:3.11-slim (the Dockerfile default)}"
    if ! "$ENGINE_BIN" build --network=host "${args[@]}" -t localhost/linepulse:latest \
        -f "$ROOT/Dockerfile" "$ROOT"; then
        if [[ -z "$base" ]]; then
            die "building linepulse failed; if no image registry is reachable from here, run: $0 --offline"
        fi
        die "building linepulse failed"
    fi
    say "localhost/linepulse:latest ready ($((SECONDS - started)) s)"
}

build_standin() {
    local name="$1" started=$SECONDS
    need_base
    if [[ "$name" == kafka ]]; then
        bash "$HERE/kafka/kafka.sh" fetch
    fi
    say "linepulse-$name from $DEBIAN_IMAGE"
    "$ENGINE_BIN" build --network=host --build-arg "BASE=$DEBIAN_IMAGE" --target "$name" \
        -t "localhost/linepulse-$name:latest" -f "$HERE/images/Containerfile" "$HERE"
    say "localhost/linepulse-$name:latest ready ($((SECONDS - started)) s)"
}

main() {
    local wanted=()
    for arg in "$@"; do
        case "$arg" in
            --offline) OFFLINE=1 ;;
            -h | --help)
                sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
                exit 0
                ;;
            base | linepulse | kafka | mosquitto | prometheus | alertmanager) wanted+=("$arg") ;;
            *) die "unknown image or option: $arg (see --help)" ;;
        esac
    done
    if [[ ${#wanted[@]} -eq 0 ]]; then
        wanted=(base linepulse "${STANDINS[@]}")
    fi
    ENGINE_BIN="$(engine)"
    say "engine: $ENGINE_BIN ($("$ENGINE_BIN" --version))"
    local image
    for image in "${wanted[@]}"; do
        case "$image" in
            base) build_base ;;
            linepulse) build_linepulse ;;
            *) build_standin "$image" ;;
        esac
    done
}

main "$@"
