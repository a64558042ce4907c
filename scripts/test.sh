#!/usr/bin/env bash
# The project's test command (README "Run the tests"): bring up the real-engine harness from
# scratch if needed, lint, type-check (mypy --strict), then run the whole suite. Extra arguments
# go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/test-env.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
