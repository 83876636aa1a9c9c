#!/usr/bin/env bash
# A local demo fleet: 3 shards x (primary + replica) as redis-server processes on loopback
# ports 7001-7006, and shardproxy in front on 127.0.0.1:6380 (config/shardproxy.yaml).
#
#   deploy/demo.sh          install what is missing, start everything, print how to connect
#   deploy/demo.sh stop     stop every process the demo started (by PID)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.demo"
CONFIG="$ROOT/config/shardproxy.yaml"
VENV="${SHARDPROXY_VENV:-$ROOT/.venv}"

stop_all() {
  [ -d "$STATE" ] || return 0
  for pidfile in "$STATE"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  echo "demo stopped"
  exit 0
fi

SHARDPROXY_SETUP=demo bash "$ROOT/deploy/setup.sh"
stop_all
mkdir -p "$STATE"

start_redis() {  # port [primary-port]
  local port="$1" dir="$STATE/redis-$1"
  mkdir -p "$dir"
  local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes
              --dir "$dir" --logfile "$dir/redis.log" --pidfile "$STATE/redis-$port.pid")
  [ -n "${2:-}" ] && args+=(--replicaof 127.0.0.1 "$2")
  redis-server "${args[@]}"
}
for shard in 0 1 2; do
  primary=$((7001 + shard * 2))
  start_redis "$primary"
  start_redis $((primary + 1)) "$primary"
done
for port in 7001 7002 7003 7004 7005 7006; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

nohup "$VENV/bin/shardproxy" run -c "$CONFIG" >"$STATE/shardproxy.log" 2>&1 &
echo $! >"$STATE/shardproxy.pid"
for _ in $(seq 100); do redis-cli -p 6380 ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p 6380 ping >/dev/null || { cat "$STATE/shardproxy.log"; exit 1; }

cat <<MSG
shardproxy is running on 127.0.0.1:6380 in front of 3 shards (primary + replica each):
  s1 127.0.0.1:7001 (replica 7002)   s2 127.0.0.1:7003 (replica 7004)   s3 127.0.0.1:7005 (replica 7006)

  redis-cli -p 6380                              talk to it like one Redis
  $VENV/bin/shardproxy locate -c config/shardproxy.yaml mykey    where a key lives
  curl -s 127.0.0.1:9121/metrics                 Prometheus metrics (/readyz, /topology too)
  tail -f .demo/shardproxy.log                   the proxy's log
  deploy/demo.sh stop                            stop the demo
MSG
