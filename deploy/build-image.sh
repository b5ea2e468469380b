#!/usr/bin/env bash
# Build localhost/pyflannel:<version> with podman, offline apart from Debian's package mirror:
#   1. a Debian 12 base made by mmdebstrap (minbase + python3, iproute2, iptables, nftables),
#      imported as localhost/pyflannel-base:bookworm (kept; rebuilt only when missing);
#   2. wheels of pyflannel and its dependencies made here (pip wheel);
#   3. podman build -f deploy/Containerfile with those wheels as the context.
# Needs root, podman and mmdebstrap (scripts/setup installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${IMAGE:-localhost/pyflannel:$VERSION}
BASE=localhost/pyflannel-base:bookworm
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d /var/tmp/pyflannel-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$BASE"; then
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,iproute2,iptables,nftables,ca-certificates \
    bookworm "$work/base.tar"
  podman import --quiet "$work/base.tar" "$BASE" >/dev/null
  rm -f "$work/base.tar"
fi
mkdir -p "$work/ctx/wheels"
"$PY" -m pip wheel --quiet --disable-pip-version-check -w "$work/ctx/wheels" . 2>&1 \
  | grep -v "^WARNING: Location" || true
ls "$work"/ctx/wheels/pyflannel-*.whl >/dev/null
podman build --quiet --isolation=chroot -f deploy/Containerfile -t "$IMAGE" "$work/ctx" >/dev/null
# A rebuild leaves the previous image of this tag untagged (~320 MB each time): remove ours only.
podman image prune --force --filter label=io.pyflannel.build >/dev/null
echo "$IMAGE"
