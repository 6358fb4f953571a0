#!/usr/bin/env bash
# Builds a minimal Debian base image with python3 for container tests, since no image can be pulled.
# Usage: build_base_image.sh <image-ref> <cache-dir>
# Needs root, debootstrap and podman. The tarball is cached; the image is imported when missing.
set -euo pipefail
ref=${1:-localhost/mcphost-test-base:bookworm}
cache=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/mcphost-test}
mkdir -p "$cache"
tarball="$cache/base-bookworm-python.tar"
if [ ! -s "$tarball" ]; then
  root=$(mktemp -d "$cache/rootfs.XXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >"$cache/debootstrap.log" 2>&1 \
    || { echo "debootstrap failed; see $cache/debootstrap.log" >&2; exit 1; }
  tar -C "$root" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi
if ! podman image exists "$ref"; then
  podman import "$tarball" "$ref" >/dev/null
fi
echo "$ref"
