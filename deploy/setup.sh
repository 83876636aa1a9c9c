#!/usr/bin/env bash
# Installs what shardproxy's demo and tests need on Debian/Ubuntu, idempotently:
#   - redis-server, redis-sentinel, redis-tools (redis-cli, redis-benchmark), nutcracker
#   - valkey-server and valkey-sentinel for the tests (Debian 12: from bookworm-backports)
#   - gcc and the Python headers if missing (the per-request modules are compiled, see setup.py)
#   - ruby-redis, php-cli + php-redis, libhiredis-dev: the client matrix (tests/clients/matrix.py)
#   - a virtualenv in .venv with shardproxy and its test extras
# Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SHARDPROXY_VENV:-$ROOT/.venv}"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v nutcracker >/dev/null 2>&1 || [ -x /usr/sbin/nutcracker ] || need+=(nutcracker)
# a C compiler and the Python headers, to compile the per-request modules (mypyc, setup.py)
if [ "${SHARDPROXY_COMPILE:-1}" != "0" ]; then
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
  "${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=(python3-dev)
fi
# promtool and a Prometheus server for the monitoring tests (not needed by the demo)
if [ "${SHARDPROXY_SETUP:-test}" = "test" ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  # systemd-analyze verifies deploy/systemd/shardproxy.service (the packaging tests)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  # openssl makes the TLS tests' certificates (bench/tlscerts.py)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  # Node and npm for the node client tests (tests/clients/node)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # the Ruby, PHP and C clients of the client compatibility matrix (tests/clients/matrix.py)
  ruby -e 'require "redis"' >/dev/null 2>&1 || need+=(ruby-redis)
  command -v php >/dev/null 2>&1 || need+=(php-cli)
  php -r 'exit(extension_loaded("redis") ? 0 : 1);' >/dev/null 2>&1 || need+=(php-redis)
  [ -f /usr/include/hiredis/hiredis.h ] || need+=(libhiredis-dev)
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
fi
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${need[*]} (apt)" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system redis-server on 6379 after installing it; the demo and the tests
  # run their own servers, so stop it rather than leave a stray one running.
  for svc in redis-server redis-sentinel prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $SUDO systemctl stop "$svc" || true
    elif command -v service >/dev/null 2>&1; then
      $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

# Valkey 8 (valkey-server, valkey-sentinel) for test.sh's Valkey pass. Debian 12 has it in
# bookworm-backports, added as an apt source when missing; elsewhere it is installed if apt has
# it. Not fatal: without valkey-server the Valkey pass says so and does not run.
if [ "${SHARDPROXY_SETUP:-test}" = "test" ] && ! command -v valkey-server >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  os="$(. /etc/os-release 2>/dev/null && echo "${ID:-}:${VERSION_CODENAME:-}" || true)"
  if [ "$os" = "debian:bookworm" ] \
    && ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # the mirror the system already uses for bookworm, else deb.debian.org
    mirror="$(awk '/^URIs:/ {u=$2} /^Suites:.*bookworm( |$)/ && u {print u; exit}' \
      /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [ -n "$mirror" ] || mirror="$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' \
      /etc/apt/sources.list 2>/dev/null || true)"
    echo "adding bookworm-backports (${mirror:-http://deb.debian.org/debian}) to apt for valkey-server" >&2
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
      "${mirror:-http://deb.debian.org/debian}" /usr/share/keyrings/debian-archive-keyring.gpg \
      | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    $SUDO apt-get update -qq || true
  elif ! apt-cache show valkey-server >/dev/null 2>&1; then
    $SUDO apt-get update -qq || true
  fi
  echo "installing valkey-server valkey-sentinel (apt)" >&2
  if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    valkey-server valkey-sentinel >/dev/null; then
    # like redis-server above: the tests run their own servers, not the system's on 6379
    for svc in valkey-server valkey-sentinel; do
      if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
      elif command -v service >/dev/null 2>&1; then
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
      fi
    done
  else
    echo "warning: valkey-server could not be installed; deploy/test.sh skips its Valkey pass" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    "$PY" -m venv "$VENV"
  }
fi
stamp="$VENV/.shardproxy-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
# The per-request modules are compiled in place (setup.py, mypyc). A source edited since the
# last build would be shadowed by its stale compiled module, so rebuild when any is newer.
if [ "${SHARDPROXY_COMPILE:-1}" != "0" ]; then
  lib="$(ls "$ROOT"/shardproxy_native__mypyc.*.so 2>/dev/null | head -n 1 || true)"
  if [ -z "$lib" ] || [ -n "$(find "$ROOT/shardproxy" "$ROOT/setup.py" -name '*.py' -newer "$lib" | head -n 1)" ]; then
    echo "compiling the per-request modules (mypyc, about 30 s)" >&2
    "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  fi
fi
# The node client libraries the tests drive (versions pinned by tests/clients/node's lockfile)
if [ "${SHARDPROXY_SETUP:-test}" = "test" ]; then
  NODE_DIR="$ROOT/tests/clients/node"
  if [ ! -d "$NODE_DIR/node_modules" ] || [ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules" ]; then
    echo "installing the node client libraries (npm ci)" >&2
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$NODE_DIR/node_modules"
  fi
fi
