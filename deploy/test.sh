#!/usr/bin/env bash
# Runs shardproxy's whole test suite: installs what it needs (see setup.sh), then lint, types,
# the layering contracts (.importlinter) and pytest on the compiled build; then, with no
# arguments, the unit and sans-IO suites and a proxy smoke test once more on the interpreted
# sources (SHARDPROXY_PURE=1), the fallback build.
# Extra arguments go to pytest (e.g. deploy/test.sh -k resp -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/deploy/setup.sh"
VENV="${SHARDPROXY_VENV:-$ROOT/.venv}"
cd "$ROOT"
"$VENV/bin/ruff" check shardproxy tests bench setup.py
"$VENV/bin/ruff" format --check shardproxy tests bench setup.py
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache
"$VENV/bin/python" -m pytest "$@"
if [ "$#" -eq 0 ]; then
  SHARDPROXY_PURE=1 "$VENV/bin/python" -m pytest -q tests/test_build.py tests/test_fifo.py tests/test_resp.py \
    tests/test_hashing.py tests/test_ring.py tests/test_commands.py tests/test_proxy.py \
    tests/test_session_sansio.py tests/test_backend_sansio.py tests/test_modes.py \
    tests/test_transaction_sansio.py
fi
