#!/usr/bin/env bash
# podman and buildah as this project runs them: one storage outside git (the layer cache of
# `make images`) and, for podman, the runtime settings these machines need. Source it for the
# functions, or run `images/podman.sh podman|buildah ARGS...` (what the tests do).
#
#   runc, not crun: crun fails on this machine's hybrid cgroups; cgroupfs: no systemd here;
#   file events: no journald. Containers that runc starts also need `--ulimit nofile=1024:1024
#   --ulimit nproc=1024:1024` (no CAP_SYS_RESOURCE to raise them) and `--network host`.
SWITCHBOARD_CONTAINERS=${SWITCHBOARD_CONTAINERS:-$HOME/.cache/switchboard/containers}
STORAGE_FLAGS=(--root "$SWITCHBOARD_CONTAINERS/storage" --runroot "$SWITCHBOARD_CONTAINERS/run"
               --storage-driver overlay)
podman() {
  command podman "${STORAGE_FLAGS[@]}" --runtime runc --cgroup-manager cgroupfs \
    --events-backend file "$@"
}
buildah() { command buildah "${STORAGE_FLAGS[@]}" "$@"; }

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    podman | buildah) "$@" ;;
    *) echo "usage: $0 podman|buildah ARGS..." >&2; exit 2 ;;
  esac
fi
