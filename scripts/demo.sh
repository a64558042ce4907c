#!/usr/bin/env bash
# README "Run the demo": bring up a private Docker engine and loopback registry (as the tests
# do), then run byoc-orch on an aiModels.json that serves the reference worker in both health
# styles, a cold entry, and three replicas of one entry placed on a pretend pool of four GPUs
# (this engine's NVIDIA hook is a stub, so `--gpus device=N` launches without a GPU). Extra
# arguments go to `byoc-orch run`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/test-env.sh
set -a
# shellcheck disable=SC1091
. "${BYOC_TEST_STATE:-/var/tmp/byoc-orch-test}/harness.env"
set +a

DEMO=${BYOC_TEST_STATE:-/var/tmp/byoc-orch-test}/demo
mkdir -p "$DEMO"
cat >"$DEMO/aiModels.json" <<EOF
[
  {
    "pipeline": "live-video-to-video",
    "model_id": "demo-pytrickle",
    "container": "$BYOC_TEST_WORKER_IMAGE",
    "url": "http://127.0.0.1:18001",
    "warm": true,
    "env": {"DEMO_LOAD_SECONDS": "3"}
  },
  {
    "pipeline": "live-video-to-video",
    "model_id": "demo-docs-style",
    "container": "$BYOC_TEST_WORKER_IMAGE",
    "url": "http://127.0.0.1:18002",
    "warm": true,
    "gpus": "none",
    "env": {"DEMO_HEALTH_STYLE": "docs", "DEMO_ROUTES": "api"}
  },
  {
    "pipeline": "live-video-to-video",
    "model_id": "demo-replicas",
    "container": "$BYOC_TEST_WORKER_IMAGE",
    "url": "http://127.0.0.1:18010",
    "warm": true,
    "replicas": 3,
    "env": {"DEMO_LOAD_SECONDS": "2"}
  },
  {
    "pipeline": "text-to-image",
    "model_id": "demo-cold",
    "container": "$BYOC_TEST_WORKER_IMAGE",
    "url": "http://127.0.0.1:18003",
    "warm": false
  }
]
EOF
export BYOC_ORCH_GPUS=${BYOC_ORCH_GPUS:-0,1,2,3}
export BYOC_ORCH_STATE_DIRECTORY=${BYOC_ORCH_STATE_DIRECTORY:-$DEMO/state}
echo "demo aiModels.json: $DEMO/aiModels.json (GPU pool: $BYOC_ORCH_GPUS)"
.venv/bin/byoc-orch validate "$DEMO/aiModels.json"

# byoc-orch leaves its containers running when it stops (the next start adopts them): say how
# to remove them once it has. Ctrl-C (or a TERM to this script) is passed on as SIGTERM, which
# byoc-orch handles as it does under systemd.
RUN_DIR=${BYOC_TEST_RUN:-/run/byoc-orch-test}
left_running() {
  local docker="docker -H $BYOC_TEST_DOCKER_HOST" names
  names=$($docker ps -a --filter label=byoc-orch.instance=demo --format '  {{.Names}}  {{.Status}}' 2>/dev/null || true)
  if [ -z "$names" ]; then
    printf '\nThe demo left no worker container behind.\n'
    return
  fi
  printf '\nThe demo left these worker containers behind (byoc-orch adopts running ones at its next start):\n%s\n' "$names"
  printf 'Remove them:\n  %s rm -f $(%s ps -aq --filter label=byoc-orch.instance=demo)\n' "$docker" "$docker"
  printf 'The private Docker engines and registries scripts/test-env.sh started keep running for the\n'
  printf 'tests; stop the engines with: kill $(cat %s/main.pid) $(cat %s/nogpu.pid)\n' "$RUN_DIR" "$RUN_DIR"
}
.venv/bin/byoc-orch run --models "$DEMO/aiModels.json" --instance demo \
  --docker-host "$BYOC_TEST_DOCKER_HOST" --log-format console "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
status=0
while true; do
  if wait "$child"; then status=0; else status=$?; fi
  kill -0 "$child" 2>/dev/null || break
done
left_running
exit "$status"
