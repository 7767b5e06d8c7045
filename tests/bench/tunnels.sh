#!/usr/bin/env bash
# tunnels.sh - the gateway's tunnel benchmark: runs ../shared/bench/tunnel-peers.sh (the
# loopback harness with the direct baseline and the peers) with Gatehouse's own gateway
# plugged in, in each of its modes:
#
#   tcp : a forwarded port (POST /gateway/v1/forwards with a ticket)
#   ws  : WebSocket tunnel on the plain port
#   wss : WebSocket tunnel over TLS
#   ws-client, wss-client : the same tunnels with Gatehouse's own client in front
#         (`gatehouse tunnel`, as native clients use it) instead of the harness's websocat
#         client: the harness reaches it as a plain TCP port. Its peers are websocat's and
#         stunnel's own client-and-server pairs. Idle memory is not measured here (the
#         process group holds the client as well); the ws and wss runs measure it.
#
# A tunnel opens only with a ticket for its one target, and the harness's client path is
# fixed for a whole run, so each WebSocket mode runs the harness once per target server
# (iperf3 for up/down, echo for round trips, hold for idle memory) with a fixed PORT_BASE.
#
# Usage: tests/bench/tunnels.sh [tcp] [ws] [wss] [ws-client] [wss-client]   (default: all)
# Environment: HARNESS (path of tunnel-peers.sh), PEERS_TCP, PEERS_WS, PEERS_WSS (peers run
# beside the gateway in the same run), IDLE_N_WSS (idle TLS tunnels, default 10000),
# BUSY_POLL (microseconds: runs the gateway and its client with --busy-poll, named
# gatehouse-busy in the tables; default 0, off), and the harness's own tunables (RUNS,
# DURATION, PINGS, IDLE_N, ...).
# Results: one summary per run under $OUT (printed at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench/tunnel-peers.sh}
[ -x "$HARNESS" ] || [ -f "$HARNESS" ] || { echo "harness not found: $HARNESS" >&2; exit 2; }
MODES=("$@"); [ ${#MODES[@]} -gt 0 ] || MODES=(tcp ws wss ws-client wss-client)
PEERS_TCP=${PEERS_TCP:-"haproxy socat"}
PEERS_WS=${PEERS_WS:-"websocat websockify-py"}
PEERS_WSS=${PEERS_WSS:-"websocat-tls haproxy-tls stunnel"}
IDLE_N_WSS=${IDLE_N_WSS:-10000}
BUSY_POLL=${BUSY_POLL:-0}
NAME=gatehouse
[ "$BUSY_POLL" = 0 ] || NAME=gatehouse-busy

echo "building the release binary..." >&2
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/gatehouse
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-tunnels.XXXXXX")
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
trap 'rm -rf "$WORK/data"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# One broker: its public key for the gateway, tickets for the targets.
"$BIN" broker-key export --data "$WORK/data" --out "$WORK/broker.pem" >/dev/null
ticket() { "$BIN" ticket issue --data "$WORK/data" --target "127.0.0.1:$1" --ttl 7200 --client-addr 127.0.0.1; }

# A fixed base so the target ports (base+1 iperf3, +2 echo, +3 hold) are known in advance.
free_base() {
  local base
  for base in $(seq 23000 100 31900 | shuf); do
    if ! ss -Htln | awk '{print $4}' | grep -Eq ":($((base+1))|$((base+2))|$((base+3))|$((base+10))|$((base+11)))$"; then
      echo "$base"; return
    fi
  done
  echo 23000
}

GW_FLAGS="--broker-key $WORK/broker.pem --keepalive 30 --busy-poll $BUSY_POLL"
GW="exec $BIN gateway $GW_FLAGS"
# The gateway on LISTEN_PORT + 1000 (URL scheme $1, gateway flags $2), and `gatehouse tunnel` on
# LISTEN_PORT in front of it with a ticket for TARGET_PORT, in one process group.
client_cmd() {
  local scheme=$1 flags=$2 probe=http
  [ "$scheme" = wss ] && probe=https
  echo "$BIN gateway $GW_FLAGS $flags --allowed-ports \$TARGET_PORT & \
    for i in \$(seq 100); do curl -sk -o /dev/null $probe://127.0.0.1:\$((LISTEN_PORT + 1000))/ && break; sleep 0.1; done; \
    t=\$($BIN ticket issue --data $WORK/data --target 127.0.0.1:\$TARGET_PORT --ttl 7200 --client-addr 127.0.0.1); \
    $BIN tunnel --gateway $scheme://127.0.0.1:\$((LISTEN_PORT + 1000))/tunnel --ticket \$t --insecure --busy-poll $BUSY_POLL \
      --listen 127.0.0.1:\$LISTEN_PORT & wait"
}

run() {  # name mode peers skip target_offset extra_env...
  local name=$1 mode=$2 peers=$3 skip=$4 offset=$5; shift 5
  local base; base=$(free_base)
  local path="/"
  case "$mode" in
    ws|wss) path="/tunnel?ticket=$(ticket $((base + offset)))" ;;
  esac
  local cmd
  case "$mode" in
    tcp) cmd="$BIN gateway $GW_FLAGS --listen 127.0.0.1:0 \
            --plain-listen 127.0.0.1:\$((LISTEN_PORT + 1000)) --port-range \$LISTEN_PORT-\$LISTEN_PORT \
            --forward-window 7200 --allowed-ports \$TARGET_PORT & pid=\$!; \
          for i in \$(seq 100); do curl -s -o /dev/null http://127.0.0.1:\$((LISTEN_PORT + 1000))/ && break; sleep 0.1; done; \
          t=\$($BIN ticket issue --data $WORK/data --target 127.0.0.1:\$TARGET_PORT --ttl 7200 --client-addr 127.0.0.1); \
          curl -sf -X POST -H 'content-type: application/json' -d \"{\\\"ticket\\\":\\\"\$t\\\"}\" \
            http://127.0.0.1:\$((LISTEN_PORT + 1000))/gateway/v1/forwards >/dev/null; wait \$pid" ;;
    ws)  cmd="$GW --listen 127.0.0.1:0 --plain-listen \$LISTEN_HOST:\$LISTEN_PORT --allowed-ports \$TARGET_PORT" ;;
    wss) cmd="$GW --listen \$LISTEN_HOST:\$LISTEN_PORT --cert \$TLS_CERT --key \$TLS_KEY --allowed-ports \$TARGET_PORT" ;;
    ws-client) cmd=$(client_cmd ws "--listen 127.0.0.1:0 --plain-listen 127.0.0.1:\$((LISTEN_PORT + 1000))") ;;
    wss-client) cmd=$(client_cmd wss "--listen 127.0.0.1:\$((LISTEN_PORT + 1000)) --cert \$TLS_CERT --key \$TLS_KEY") ;;
  esac
  local harness_mode=$mode
  case "$mode" in *-client) harness_mode=tcp ;; esac
  echo "== $name (mode $mode, peers: direct $peers gateway; skip: ${skip:-none})" >&2
  env "$@" PORT_BASE="$base" SKIP="$skip" OUT_DIR="$OUT/$name" \
    GATEWAY_CMD="$cmd" GATEWAY_MODE="$harness_mode" GATEWAY_WS_PATH="$path" GATEWAY_NAME=$NAME \
    bash "$HARNESS" direct $peers gateway >&2 || echo "run $name failed" >&2
}

for mode in "${MODES[@]}"; do
  case "$mode" in
    tcp) run tcp tcp "$PEERS_TCP" "" 0 ;;
    ws)
      run ws-throughput ws "$PEERS_WS" "rtt idle" 1
      run ws-rtt ws "$PEERS_WS" "up down idle" 2
      run ws-idle ws "$PEERS_WS" "up down rtt" 3 ;;
    wss)
      run wss-throughput wss "$PEERS_WSS" "rtt idle" 1
      run wss-rtt wss "$PEERS_WSS" "up down idle" 2
      run wss-idle wss "" "up down rtt" 3 IDLE_N="$IDLE_N_WSS" ;;
    ws-client) run ws-client ws-client "$PEERS_WS" "idle" 0 ;;
    wss-client) run wss-client wss-client "$PEERS_WSS" "idle" 0 ;;
    *) echo "unknown mode $mode (tcp, ws, wss, ws-client, wss-client)" >&2; exit 2 ;;
  esac
done

for f in "$OUT"/*/summary.md; do
  echo "### $(basename "$(dirname "$f")")"
  cat "$f"
  echo
done
echo "results: $OUT" >&2
