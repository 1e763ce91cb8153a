#!/usr/bin/env bash
# Issue #15 item 4: build docker/Dockerfile with Podman and run the image end to end.
#
#   scripts/container_check.sh [all|build|run|clean]   (default all; the test command runs `build` in
#       the background and `run` after the suite; `clean` removes what an interrupted run left)
#
# No registry is reachable here, so the base is a stand-in made with mmdebstrap (Debian bookworm,
# python3.11, tini, wget, sudo with the Ray image's passwordless rule for `ray` uid 1000 gid 100, the
# host's CA certificates and pip configuration) and passed as RAY_IMAGE. The Dockerfile is built
# unchanged with --format docker (keeps HEALTHCHECK), without NVIDIA's index and without baking the
# weights in. The container then answers health, runs a short end-to-end through its HTTP API
# (scripts/container_e2e.py), runs as non-root without sudo, answers its HEALTHCHECK, and keeps its
# workspace volume across a restart. Everything it made is removed at the end.
#
# The last line says PASSED, SKIPPED (with the reason) or FAILED. Exit 0 on PASSED or SKIPPED.
# SKIPPED when the machine cannot hold the build (free disk < AISTUDIO_CONTAINER_MIN_FREE_GB, default
# 40: the build writes ~20 GB and once ran out with 34 GB free beside other runs) or, outside CI, has no apt-get or root. A failing build or check exits 1 (with CI=true, so does a
# machine without apt-get or root).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
mode=${1:-all}
state=${AISTUDIO_CONTAINER_STATE:-/tmp/aistudio-container-check}
tag=aistudio-ci-$$
min_free_gb=${AISTUDIO_CONTAINER_MIN_FREE_GB:-40}
venv=${AISTUDIO_VENV:-.venv}
t0=$(date +%s)

log() { printf '[container-check %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }
phase_start=0
phase() { phase_start=$(date +%s); log "$1"; }
phase_done() { log "$1 took $(( $(date +%s) - phase_start ))s"; echo "$1=$(( $(date +%s) - phase_start ))" >> "$state/timings"; }
skip() { log "container check: SKIPPED ($1)"; echo "SKIPPED ($1)" > "$state/result"; exit 0; }
fail() { log "container check: FAILED ($1)"; echo "FAILED ($1)" > "$state/result"; exit 1; }

root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }

# Names of what this check made (so cleanup removes only its own things).
names() { cat "$state/names" 2>/dev/null || true; }

cleanup() {
  local image base container volume
  # shellcheck disable=SC1091
  [ -f "$state/names" ] && . "$state/names"
  [ -n "${container:-}" ] && root podman rm -f -t 5 "$container" >/dev/null 2>&1 || true
  [ -n "${volume:-}" ] && root podman volume rm -f "$volume" >/dev/null 2>&1 || true
  [ -n "${image:-}" ] && root podman rmi -f "$image" >/dev/null 2>&1 || true
  [ -n "${base:-}" ] && root podman rmi -f "$base" >/dev/null 2>&1 || true
  # The pip cache mount (RUN --mount=type=cache) lives in buildah's cache folder: removed only when
  # this check made it.
  if [ -f "$state/made-buildah-cache" ]; then root rm -rf /var/tmp/buildah-cache 2>/dev/null || true; fi
  rm -f "$state/rootfs.tar"
}

# ------------------------------------------------------------------ build
build() {
  rm -rf "$state"; mkdir -p "$state"
  echo "STARTED" > "$state/result"
  local free_gb
  free_gb=$(df -k --output=avail /var/lib /var/tmp "$state" | tail -n +2 | sort -n | head -1)
  free_gb=$(( free_gb / 1024 / 1024 ))
  [ "$free_gb" -ge "$min_free_gb" ] || skip "only ${free_gb} GB free disk; the image build needs ${min_free_gb} GB at its peak"
  # Only the disk floor may skip in CI; a CI machine without apt or root is a broken CI machine.
  local unable=skip; [ "${CI:-}" = true ] && unable=fail
  command -v apt-get >/dev/null || $unable "not a Debian/Ubuntu machine (no apt-get) to install podman from"
  if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then $unable "needs root (or passwordless sudo) for podman"; fi

  phase "install podman, runc, mmdebstrap"
  if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
    root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive root apt-get install -y -qq podman runc buildah mmdebstrap iptables \
      containernetworking-plugins >/dev/null
  fi
  # Podman's defaults fail on these machines (setrlimit RLIMIT_NOFILE; crun and hybrid cgroups).
  if ! grep -qs 'runtime *= *"runc"' /etc/containers/containers.conf; then
    root mkdir -p /etc/containers
    if [ -s /etc/containers/containers.conf ]; then
      fail "/etc/containers/containers.conf exists without runtime = \"runc\"; add it (and default_ulimits) by hand"
    fi
    printf '%s\n' '[containers]' 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' '' \
      '[engine]' 'runtime = "runc"' | root tee /etc/containers/containers.conf >/dev/null
  fi
  phase_done install

  local base=localhost/aistudio-ci-base:$tag image=localhost/aistudio-ci:$tag
  printf 'base=%s\nimage=%s\n' "$base" "$image" > "$state/names"

  phase "stand-in base (mmdebstrap bookworm)"
  # The host's pip configuration, merged into one file (environment included); local folders it
  # names are bind-mounted into the build read-only at the same paths.
  local pipconf="$state/pip.conf" mounts=()
  python3 - "$pipconf" "$state/mounts" "$state/constraints" <<'EOF'
import configparser, os, re, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = configparser.ConfigParser()
conf.optionxform = str
paths, constraints = set(), []
for line in out.splitlines():
    m = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line)
    if not m:
        continue
    section, key, value = m.groups()
    section = "global" if section == ":env:" else section
    if key == "cert":
        value = "/etc/ssl/certs/ca-certificates.crt"  # the base's bundle, rebuilt with the host's CA files
    if key == "constraint":
        constraints.extend(value.split())
        value = " ".join("/etc/pip-constraints/" + os.path.basename(v) for v in value.split())
    conf.setdefault(section, {})[key] = value
    for v in value.split():
        v = v.removeprefix("file://")
        if key != "constraint" and v.startswith("/"):
            paths.add(v.rstrip("/").removesuffix("/simple"))  # an index's files lie beside simple/
with open(sys.argv[1], "w") as f:
    conf.write(f)
with open(sys.argv[2], "w") as f:
    f.write("\n".join(sorted(p for p in paths if os.path.isdir(p))) + "\n")
with open(sys.argv[3], "w") as f:
    f.write("\n".join(c for c in constraints if os.path.isfile(c)) + "\n")
EOF
  # Files copied into the base: pip's configuration and constraints, the host's CA certificates.
  local overlay="$state/overlay"
  mkdir -p "$overlay/etc/pip-constraints" "$overlay/usr/local/share/ca-certificates"
  cp "$pipconf" "$overlay/etc/pip.conf"
  while read -r c; do if [ -n "$c" ]; then cp "$c" "$overlay/etc/pip-constraints/"; fi; done < "$state/constraints"
  cp -r /usr/local/share/ca-certificates/. "$overlay/usr/local/share/ca-certificates/" 2>/dev/null || true
  while read -r d; do if [ -n "$d" ]; then mounts+=(-v "$d:$d:ro"); fi; done < "$state/mounts"
  root mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=ca-certificates,python3.11,python3.11-venv,tini,wget,sudo,passwd,bash \
    --customize-hook="sync-in $overlay /" \
    --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1' \
    --customize-hook='chroot "$1" useradd -m -s /bin/bash -u 1000 -g 100 ray' \
    --customize-hook='chroot "$1" usermod -aG sudo ray' \
    --customize-hook='echo "ray ALL=NOPASSWD: ALL" >> "$1/etc/sudoers"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$state/rootfs.tar" || fail "mmdebstrap could not make the stand-in base"
  root podman import --quiet "$state/rootfs.tar" "$base" >/dev/null || fail "podman import of the base failed"
  rm -f "$state/rootfs.tar"
  phase_done base

  phase "podman build (docker/Dockerfile unchanged)"
  [ -e /var/tmp/buildah-cache ] || touch "$state/made-buildah-cache"
  # --layers=false: no intermediate images are kept (nothing to prune afterwards).
  if ! root podman build --quiet --layers=false --network host --format docker "${mounts[@]}" \
      --build-arg RAY_IMAGE="$base" --build-arg AISTUDIO_EXTRAS=postgres \
      --build-arg NVIDIA_INDEX_URL= --build-arg AISTUDIO_FETCH_WEIGHTS=0 \
      -f docker/Dockerfile -t "$image" . > "$state/build.log" 2>&1; then
    tail -40 "$state/build.log"
    fail "podman build failed (log above)"
  fi
  root podman rmi "$base" >/dev/null  # the image keeps its layers
  phase_done build
  echo "BUILT" > "$state/result"
}

# ------------------------------------------------------------------ run
http_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_health() {  # $1 url, $2 timeout s
  local deadline=$(( $(date +%s) + $2 ))
  until curl -fsS -o /dev/null "$1/api/system/health" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 1
  done
}

run() {
  # shellcheck disable=SC1091
  . "$state/names"
  local port url container=aistudio-ci-$$ volume=aistudio-ci-ws-$$
  printf 'container=%s\nvolume=%s\n' "$container" "$volume" >> "$state/names"
  port=$(http_port)
  url=http://127.0.0.1:$port

  phase "start container"
  root podman volume create "$volume" >/dev/null
  # Without systemd, podman logs that it cannot add the HEALTHCHECK timer; `healthcheck run` below works.
  root podman run -d --name "$container" -p "127.0.0.1:$port:8000" -v "$volume:/workspace" \
    --shm-size=2g "$image" > "$state/run.log" 2>&1 || { cat "$state/run.log"; fail "podman run failed"; }
  wait_health "$url" 300 || { root podman logs --tail 60 "$container"; fail "no health 200 within 300 s"; }
  phase_done start_to_health

  phase "checks inside: non-root, no sudo, HEALTHCHECK"
  local uid
  uid=$(root podman exec "$container" id -u)
  [ "$uid" != 0 ] || fail "the container runs as root"
  if root podman exec "$container" sudo -n true >/dev/null 2>&1; then fail "the runtime user still has passwordless sudo"; fi
  root podman image inspect -f '{{.HealthCheck.Test}}' "$image" | grep -q /api/system/health \
    || fail "the image has no HEALTHCHECK (built without --format docker?)"
  root podman healthcheck run "$container" || fail "podman healthcheck run failed"
  log "uid $uid inside, sudo -n refused, HEALTHCHECK healthy"
  phase_done checks

  phase "end-to-end through the HTTP API"
  "$venv/bin/python" scripts/container_e2e.py "$url" "$state/e2e.json" \
    || { root podman logs --tail 80 "$container"; fail "end-to-end failed"; }
  phase_done e2e

  phase "restart keeps the workspace"
  root podman restart -t 30 "$container" > "$state/run.log" 2>&1 || { cat "$state/run.log"; fail "podman restart failed"; }
  wait_health "$url" 300 || { root podman logs --tail 60 "$container"; fail "no health 200 after restart"; }
  "$venv/bin/python" scripts/container_e2e.py "$url" "$state/e2e.json" --after-restart \
    || fail "the workspace did not survive the restart"
  phase_done restart
}

case "$mode" in
  build)
    trap 'rc=$?; [ $rc -eq 0 ] || cleanup; exit $rc' EXIT
    build
    log "container check: image built ($(tr '\n' ' ' < "$state/timings")); the container runs with \`$0 run\`"
    exit 0 ;;
  run)
    if grep -q '^SKIPPED' "$state/result" 2>/dev/null; then log "container check: $(cat "$state/result")"; exit 0; fi
    trap 'rc=$?; phase "cleanup"; cleanup; phase_done cleanup; exit $rc' EXIT
    grep -q '^BUILT' "$state/result" 2>/dev/null || fail "no built image ($(cat "$state/result" 2>/dev/null || echo 'build not run'))"
    run ;;
  all)
    trap 'rc=$?; phase "cleanup"; cleanup; phase_done cleanup; exit $rc' EXIT
    build
    run ;;
  clean) cleanup; rm -rf "$state"; exit 0 ;;
  *) echo "usage: $0 [all|build|run|clean]" >&2; exit 2 ;;
esac
echo "PASSED" > "$state/result"
log "container check: PASSED ($(tr '\n' ' ' < "$state/timings"))"
