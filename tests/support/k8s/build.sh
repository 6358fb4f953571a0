#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 from Debian bookworm's
# `kubernetes` source package (it ships its whole vendor/ tree) with Debian's Go, and install etcd.
# Nothing but Debian's archive is used. Usage (root, Debian): build.sh OUT_DIR
# OUT_DIR gets the three binaries; an existing complete OUT_DIR is kept (the build takes ~5 minutes).
set -euo pipefail
OUT=$(realpath -m "$1")
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ] && [ -x "$OUT/kube-scheduler" ] \
   && command -v etcd >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ /etc/apt/sources.list; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends golang-go etcd-server dpkg-dev rsync jq openssl curl \
  golang-github-modern-go-reflect2-dev >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source -qq kubernetes=1.20.5+really1.20.2-1.1+deb12u1 >/dev/null 2>&1 || apt-get source -qq kubernetes >/dev/null
cd kubernetes-1.20*/
# Go >= 1.18 with the vendored reflect2 v1.0.1 makes the apiserver panic decoding maps with a named key
# type (node capacity, container resource limits); Debian's reflect2 v1.0.2 is the upstream fix.
V=vendor/github.com/modern-go/reflect2
cp $V/LICENSE "$WORK/reflect2.LICENSE"; rm -rf $V; mkdir -p $V
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s $V/
cp "$WORK/reflect2.LICENSE" $V/LICENSE
export GOPATH=$PWD/.go CGO_ENABLED=0 HOME=${HOME:-/root}
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" GOLDFLAGS="-s -w" >/dev/null
mkdir -p "$OUT.partial"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kube-scheduler "$OUT.partial/"
rm -rf "$OUT"; mv "$OUT.partial" "$OUT"
"$OUT/kube-apiserver" --version
