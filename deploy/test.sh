#!/usr/bin/env bash
# Runs shardproxy's whole test suite: installs what it needs (see setup.sh), then lint, types,
# the layering contracts (.importlinter) and pytest on the compiled build; then, with no
# arguments, the unit and sans-IO suites and a proxy smoke test once more on the interpreted
# sources (SHARDPROXY_PURE=1), the fallback build; then the server suites against Valkey.
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
    tests/test_transaction_sansio.py tests/test_blocked_sansio.py tests/test_pubsub_sansio.py \
    tests/test_cache_sansio.py
fi
# Then the integration suites that talk to the servers once more against Valkey 8
# (valkey-server, valkey-sentinel; setup.sh installs them, from bookworm-backports on Debian 12).
if [ "$#" -eq 0 ]; then
  if command -v valkey-server >/dev/null 2>&1; then
    echo "Valkey pass: $(valkey-server --version)" >&2
    SHARDPROXY_TEST_SERVER=valkey "$VENV/bin/python" -m pytest -q tests/test_proxy.py \
      tests/test_transactions.py tests/test_scripts.py tests/test_blocking.py tests/test_modes.py \
      tests/test_pubsub.py \
      tests/test_failover.py \
      tests/test_sentinel.py tests/test_several_proxies.py tests/test_reload.py \
      tests/test_backend_failures.py tests/test_backend_faults.py tests/test_lease_redis.py \
      tests/test_health.py tests/test_observability.py tests/test_workers.py
  else
    echo "Valkey pass NOT RUN: valkey-server is not installed (deploy/setup.sh could not install it)" >&2
  fi
fi
