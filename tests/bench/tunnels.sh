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
#   floor-ws, floor-wss : the floor in the gateway's place (tests/bench/tunnel_floor.rs): a
#         server that does only the data path, in the cheapest shape for each measure (two
#         blocking threads per connection for throughput; one thread that never sleeps for
#         round trips; TLS as the gateway configures it). What it gets behind the harness's
#         websocat client is the most any server can get behind that client on this machine.
#   floor-rtt : round trips only, through the gateway (ws, wss) and the floors, taken in turn
#         in one loop (ROUNDS, default 8), so that the noise of a shared machine falls on
#         all of them alike.
#
# A tunnel opens only with a ticket for its one target, and the harness's client path is
# fixed for a whole run, so each WebSocket mode runs the harness once per target server
# (iperf3 for up/down, echo for round trips, hold for idle memory) with a fixed PORT_BASE.
#
# Usage: tests/bench/tunnels.sh [tcp] [ws] [wss] [ws-client] [wss-client] [floor-ws] [floor-wss]
#        [floor-rtt]   (default: the first five)
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
cargo build --release --locked --quiet --manifest-path "$ROOT/Cargo.toml" --bin gatehouse --example tunnel_floor
BIN=$ROOT/target/release/gatehouse
FLOOR=$ROOT/target/release/examples/tunnel_floor
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-tunnels.XXXXXX")
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
# Processes floor-rtt starts (each its own process group), stopped when it ends or the script does.
STARTED=()
stop_started() { [ ${#STARTED[@]} -eq 0 ] || kill -- "${STARTED[@]/#/-}" 2>/dev/null || true; STARTED=(); }
trap 'stop_started; rm -rf "$WORK/data"' EXIT
WEBSOCAT=$(command -v websocat || echo "$HOME/.cargo/bin/websocat")
# The harness runs its Python websockify peer (Debian's python3-websockify) with the python3 on
# PATH: one without websockify ahead of Debian's (pyenv, a virtualenv) would drop that peer.
if ! python3 -c 'import websockify' 2>/dev/null && /usr/bin/python3 -c 'import websockify' 2>/dev/null; then
  mkdir -p "$WORK/bin" && ln -sf /usr/bin/python3 "$WORK/bin/python3" && PATH="$WORK/bin:$PATH"
  echo "python3 is /usr/bin/python3 here: it has websockify" >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# One broker: its public key for the gateway, tickets for the targets.
"$BIN" broker-key export --data "$WORK/data" --out "$WORK/broker.pem" >/dev/null
ticket() { "$BIN" ticket issue --data "$WORK/data" --target "127.0.0.1:$1" --ttl 7200 --client-addr 127.0.0.1; }

# A fixed base so the target ports (base+1 iperf3, +2 echo, +3 hold) are known in advance;
# free_base OFFSET... checks other ports instead (default: the harness's).
free_base() {
  local base offsets=("$@") o ports
  [ ${#offsets[@]} -gt 0 ] || offsets=(1 2 3 10 11)
  for base in $(seq 23000 100 31900 | shuf); do
    ports=""
    for o in "${offsets[@]}"; do ports="$ports|$((base + o))"; done
    if ! ss -Htln | awk '{print $4}' | grep -Eq ":(${ports#|})$"; then
      echo "$base"; return
    fi
  done
  echo 23000
}

# The gateway's flags in every mode: as words, and as one string for the harness's commands.
# The harness opens all its idle tunnels with one ticket, so as one session: no session limit.
GW_ARGS=(--broker-key "$WORK/broker.pem" --keepalive 30 --busy-poll "$BUSY_POLL"
  --max-tunnels-per-session 1000000)
GW_FLAGS="${GW_ARGS[*]}"
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
  local name=$1 mode=$2 peers=$3 skip=$4 offset=$5 label=$NAME; shift 5
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
    floor-ws-threads) cmd="exec $FLOOR --threads" ;;
    floor-ws-spin) cmd="exec $FLOOR --spin" ;;
    floor-wss-spin) cmd="exec $FLOOR --spin --tls" ;;
  esac
  local harness_mode=$mode
  case "$mode" in
    *-client) harness_mode=tcp ;;
    floor-ws-*) harness_mode=ws label=floor ;;
    floor-wss-*) harness_mode=wss label=floor ;;
  esac
  echo "== $name (mode $mode, peers: direct $peers gateway; skip: ${skip:-none})" >&2
  # $peers is a list of peer names: split on purpose.
  # shellcheck disable=SC2086
  env "$@" PORT_BASE="$base" SKIP="$skip" OUT_DIR="$OUT/$name" \
    GATEWAY_CMD="$cmd" GATEWAY_MODE="$harness_mode" GATEWAY_WS_PATH="$path" GATEWAY_NAME=$label \
    bash "$HARNESS" direct $peers gateway >&2 || echo "run $name failed" >&2
}

# Round trips through the gateway and through the floor, taken in turn in one loop (ROUNDS
# rounds of PINGS 64-byte round trips each), so that a noisy machine weighs on all alike. The
# clients and the echo server work as the harness's do (websocat in front, TCP_NODELAY, Python;
# the harness keeps its own inside its script, so rtt.py below is a small copy of them).
# Columns: direct; the gateway over ws and wss (busy polling as BUSY_POLL says); the floor
# that never sleeps (ws, wss) and the floor of two blocking threads (ws).
floor_rtt() {
  local base rounds=${ROUNDS:-8} pings=${PINGS:-10000}
  base=$(free_base 2 4 5 6 7 8 9 10 11 12 13)
  local echo=$((base + 2)) dir="$WORK/floor-rtt"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  cat > "$dir/rtt.py" <<'PYEOF'
import socket, sys, threading, time
def echo(port):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(port))); ls.listen(128)
    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while d := c.recv(65536):
            c.sendall(d)
        c.close()
    while True:
        threading.Thread(target=serve, args=(ls.accept()[0],), daemon=True).start()
def pingpong(port, count):
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg, lat, pc = b"p" * 64, [], time.perf_counter_ns
    def once():
        s.sendall(msg); got = 0
        while got < 64:
            n = len(s.recv(64 - got))
            if n == 0: raise EOFError("closed")
            got += n
    for _ in range(200): once()
    for _ in range(int(count)):
        t0 = pc(); once(); lat.append(pc() - t0)
    lat.sort(); print("%.1f" % (lat[len(lat) // 2] / 1000))
globals()[sys.argv[1]](*sys.argv[2:])
PYEOF
  start() { setsid "$@" >>"$dir/servers.log" 2>&1 < /dev/null & STARTED+=($!); }
  listening() {
    for _ in $(seq 100); do ss -Htln | awk '{print $4}' | grep -q ":$1$" && return; sleep 0.1; done
    echo "nothing listens on $1" >&2; return 1
  }
  start python3 "$dir/rtt.py" echo "$echo"
  start "$BIN" gateway "${GW_ARGS[@]}" --listen 127.0.0.1:0 --plain-listen "127.0.0.1:$((base + 4))" --allowed-ports "$echo"
  start "$BIN" gateway "${GW_ARGS[@]}" --listen "127.0.0.1:$((base + 5))" --cert "$dir/cert.pem" --key "$dir/key.pem" --allowed-ports "$echo"
  export LISTEN_HOST=127.0.0.1 TARGET_HOST=127.0.0.1 TARGET_PORT=$echo TLS_CERT=$dir/cert.pem TLS_KEY=$dir/key.pem
  LISTEN_PORT=$((base + 6)) start "$FLOOR" --spin
  LISTEN_PORT=$((base + 7)) start "$FLOOR" --spin --tls
  LISTEN_PORT=$((base + 8)) start "$FLOOR" --threads
  local p url t
  for p in "$echo" $((base + 4)) $((base + 5)) $((base + 6)) $((base + 7)) $((base + 8)); do listening "$p" || break; done
  t=$(ticket "$echo")
  local urls=("ws://127.0.0.1:$((base + 4))/tunnel?ticket=$t" "wss://127.0.0.1:$((base + 5))/tunnel?ticket=$t"
    "ws://127.0.0.1:$((base + 6))/" "wss://127.0.0.1:$((base + 7))/" "ws://127.0.0.1:$((base + 8))/")
  local ports=("$echo")
  for p in 0 1 2 3 4; do
    url=${urls[$p]}
    start "$WEBSOCAT" -k -E --binary -q --protocol binary "tcp-l:127.0.0.1:$((base + 9 + p))" "$url"
    ports+=($((base + 9 + p)))
  done
  for p in "${ports[@]}"; do listening "$p" || break; done
  echo "== floor-rtt: $rounds rounds of $pings round trips, in turn (gateway --busy-poll $BUSY_POLL)" >&2
  local r line
  for r in $(seq "$rounds"); do
    line=""
    for p in "${ports[@]}"; do line="$line $(timeout 60 python3 "$dir/rtt.py" pingpong "$p" "$pings" || echo NA)"; done
    echo "round $r:$line" >&2
    echo "$line" >> "$dir/rounds.txt"
  done
  stop_started
  mkdir -p "$OUT/floor-rtt"
  python3 - "$dir/rounds.txt" "$NAME" > "$OUT/floor-rtt/summary.md" <<'PYEOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = ["direct", sys.argv[2] + "(ws)", sys.argv[2] + "(wss)", "floor-spin(ws)", "floor-spin(wss)", "floor-threads(ws)"]
print("| server | RTT median us | added to direct (median of the rounds) |\n|---|---|---|")
for i, name in enumerate(names):
    ok = [r for r in rows if "NA" not in (r[0], r[i])]
    if not ok:
        print("| %s | - | - |" % name); continue
    med = statistics.median(float(r[i]) for r in ok)
    added = statistics.median(float(r[i]) - float(r[0]) for r in ok)
    print("| %s | %.1f | %+.1f |" % (name, med, added))
print("\n%d rounds of round trips taken in turn; websocat client in front of every server." % len(rows))
PYEOF
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
    floor-ws)
      run floor-ws-throughput floor-ws-threads "" "rtt idle" 1
      run floor-ws-rtt floor-ws-spin "" "up down idle" 2 ;;
    floor-wss) run floor-wss-rtt floor-wss-spin "" "up down idle" 2 ;;
    floor-rtt) floor_rtt ;;
    *) echo "unknown mode $mode (tcp, ws, wss, ws-client, wss-client, floor-ws, floor-wss, floor-rtt)" >&2; exit 2 ;;
  esac
done

for f in "$OUT"/*/summary.md; do
  echo "### $(basename "$(dirname "$f")")"
  cat "$f"
  echo
done
echo "results: $OUT" >&2
