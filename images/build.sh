#!/usr/bin/env bash
# Builds the three images without a Docker daemon (`make images`):
#   localhost/switchboard/switchboard-operator, tool-gateway and agent-runtime, tagged with the
#   project's version (the chart's appVersion) and `dev`.
#
#   1. base: a Debian bookworm rootfs from mmdebstrap (python3 + venv, no docs), imported with
#      podman as localhost/switchboard/base:bookworm. Cached as a tarball.
#   2. context: the project's wheel and, per image, its dependency list generated from
#      pyproject.toml (build/images/context, outside git).
#   3. build: `buildah bud --layers --isolation chroot` of images/*.Containerfile, never pulling.
#
# Everything that makes a second build fast lives outside git, under $SWITCHBOARD_CONTAINERS
# (default ~/.cache/switchboard/containers): the base tarball and the container storage with
# its layer cache. Delete that folder for a cold build.
#
# This machine's pip settings (its CA bundle, local wheel folders such as the CPU build of
# torch) are handed to pip inside the build through a generated pip.conf and read-only mounts.
#
# `images/build.sh context` only writes the build context (for docker or another builder).
# Environment: PYTHON (the venv's python, for the wheel), IMAGES (which to build, default all
# three), SWITCHBOARD_CONTAINERS. Prints one JSON line of timings per image on the last lines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGES=${IMAGES:-"operator gateway agent-runtime"}
STORE=${SWITCHBOARD_CONTAINERS:-$HOME/.cache/switchboard/containers}
CONTEXT=build/images/context
BASE=localhost/switchboard/base:bookworm
# What the base carries beyond minbase: python3 with venv (every image), CA certificates (pip,
# boto3 and the Kubernetes client verify TLS).
BASE_PACKAGES=python3,python3-venv,ca-certificates
source images/podman.sh  # STORAGE_FLAGS, podman(), buildah()

declare -A NAME=([operator]=switchboard-operator [gateway]=tool-gateway
                 [agent-runtime]=agent-runtime)
declare -A EXTRA=([operator]=operator [gateway]=gateway [agent-runtime]=serving)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

base_image() {
  # The mmdebstrap arguments name the tarball: change them and a new base is built.
  local args=(--variant=minbase --mode=root --format=tar --include="$BASE_PACKAGES"
              --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
              --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
              --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*'
              --dpkgopt='path-include=/usr/share/doc/*/copyright')
  local key tarball
  key=$(printf '%s\n' "${args[@]}" | sha256sum | cut -c1-12)
  tarball=$STORE/base-bookworm-$key.tar
  if [[ ! -f $tarball ]]; then
    echo "==> base rootfs (mmdebstrap bookworm)"
    mmdebstrap "${args[@]}" bookworm "$tarball.part" >"$STORE/mmdebstrap.log" 2>&1 \
      || { tail -20 "$STORE/mmdebstrap.log" >&2; return 1; }
    mv "$tarball.part" "$tarball"
  fi
  local have
  have=$(podman image inspect --format '{{index .Labels "switchboard.base"}}' "$BASE" 2>/dev/null || true)
  if [[ $have != "$key" ]]; then
    echo "==> podman import $BASE"
    podman import -q --change "LABEL switchboard.base=$key" --change 'CMD ["/bin/bash"]' \
      "$tarball" "$BASE" >/dev/null
  fi
}

context() {
  rm -rf "$CONTEXT" build/lib  # setuptools would pack stale modules left in build/lib
  mkdir -p "$CONTEXT/wheels" "$CONTEXT/requirements"
  "$PYTHON" -P -m pip wheel --quiet --no-deps -w "$CONTEXT/wheels" . >/dev/null
  "$PYTHON" -P images/requirements.py "$CONTEXT/requirements"
}

# pip inside the build trusts this machine's CA bundle and sees its local wheel folders.
pip_settings() {
  local conf=$CONTEXT/pip.conf mounts=() links=()
  MOUNTS=(-v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro)
  mapfile -t links < <("$PYTHON" -P -m pip config list 2>/dev/null \
    | sed -nE "s/^(:env:|global)\.find-links='(.*)'$/\2/p" | tr ' ' '\n' | sed 's|^file://||' \
    | sort -u)
  {
    echo "[global]"
    echo "cert = /run/host-ca.crt"
    for dir in "${links[@]}"; do
      [[ -d $dir ]] || continue
      echo "find-links = $dir"
      mounts+=(-v "$dir:$dir:ro")
    done
  } >"$conf"
  MOUNTS+=("${mounts[@]}" -v "$PWD/$conf:/etc/pip.conf:ro")
}

build() {
  local image=$1 started tag revision version
  started=$(now)
  version=$("$PYTHON" -P -c 'import importlib.metadata as m; print(m.version("switchboard"))')
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  tag=localhost/switchboard/${NAME[$image]}
  echo "==> $tag:$version"
  # Docker format: OCI image configs have no SHELL, and the Containerfiles set pipefail with it.
  local args=(--format docker --layers --isolation chroot --pull-never -f "images/$image.Containerfile"
              --build-arg "BASE_IMAGE=$BASE" --build-arg "VERSION=$version"
              --build-arg "REVISION=$revision" "${MOUNTS[@]}")
  # The CPU torch comes from the local wheel folder here (the Containerfile's default index
  # is not reachable from these machines; PyPI is).
  [[ $image == agent-runtime ]] && args+=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
  # The dependency stage gets a tag of its own: untagged, it would look unused to the prune below
  # (the final image copies from it but does not descend from it), and be rebuilt every time.
  {
    buildah bud "${args[@]}" --target deps -t "localhost/switchboard/cache:$image-deps" "$CONTEXT" \
      && buildah bud "${args[@]}" -t "$tag:$version" -t "$tag:dev" "$CONTEXT"
  } >"$STORE/build-$image.log" 2>&1 || { tail -40 "$STORE/build-$image.log" >&2; return 1; }
  local size
  size=$(podman image inspect --format '{{.Size}}' "$tag:$version")
  TIMINGS+=("{\"image\": \"$tag:$version\", \"extra\": \"${EXTRA[$image]}\", \"build_seconds\": $(since "$started"), \"size_bytes\": $size}")
}

if [[ ${1:-} == context ]]; then  # the build context alone, for other builders (README)
  context
  echo "$CONTEXT"
  exit 0
fi
mkdir -p "$STORE"
TIMINGS=()
t0=$(now)
base_image
echo "base: $(since "$t0")s"
context
pip_settings
for image in $IMAGES; do
  build "$image"
done
# Untagged images left by earlier builds (the layer cache keeps what later builds reuse).
podman image prune -f >/dev/null
printf '%s\n' "${TIMINGS[@]}"
echo "{\"total_seconds\": $(since "$t0")}"
