#!/usr/bin/env bash
# Runs shardproxy's whole test suite: installs what it needs (see setup.sh), then lint, types
# and pytest. Extra arguments go to pytest (e.g. deploy/test.sh -k resp -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/deploy/setup.sh"
VENV="${SHARDPROXY_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check shardproxy tests bench
"$VENV/bin/ruff" format --check shardproxy tests bench
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
