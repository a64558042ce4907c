#!/usr/bin/env bash
# README "Run the demo": bring up a private Docker engine and loopback registry (as the tests
# do), then run byoc-orch on an aiModels.json that serves the reference worker in both health
# styles. Extra arguments go to `byoc-orch run`.
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
    "pipeline": "text-to-image",
    "model_id": "demo-cold",
    "container": "$BYOC_TEST_WORKER_IMAGE",
    "url": "http://127.0.0.1:18003",
    "warm": false
  }
]
EOF
echo "demo aiModels.json: $DEMO/aiModels.json"
.venv/bin/byoc-orch validate "$DEMO/aiModels.json"
exec .venv/bin/byoc-orch run --models "$DEMO/aiModels.json" --instance demo \
  --docker-host "$BYOC_TEST_DOCKER_HOST" --log-format console "$@"
