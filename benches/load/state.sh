#!/usr/bin/env bash
# The state store's cost, side by side in one run: the memory store, the Redis store with one
# replica, and two replicas sharing one Redis (the load split between them), each measured on
#   - npm's exchange per second (keep-alive, each pre-minted RS256 ID token used once): a spent-
#     jti claim and a phantom insert per exchange;
#   - publishes per second (a 1 KB publish body, 16 keep-alive connections: one phantom, which
#     may have 16 writes open at once, without a use limit):
#     a write opened, a use spent and settled in the store, the write-ahead audit line;
#   - the GET path's CPU per request (keep-alive GETs with a phantom: its lookup, cached for a
#     second on the Redis store).
# Rounds are interleaved (memory, redis, two replicas, then again); the figures are medians.
# The upstream is a static nginx over TLS that answers a publish with 201 (never the bottleneck);
# Redis is Debian's redis-server over TLS, persistence off. Everything on 127.0.0.1.
#
#   bash benches/load/state.sh            # about 6 minutes
#   bash benches/load/state.sh --smoke    # one short pass: checks it all still works
#   INSTRUCTIONS=1 bash benches/load/state.sh   # instructions per keep-alive GET with a phantom,
#                                         # memory store against Redis store, counted by callgrind
#                                         # (repeatable, unlike CPU seconds on shared cores)
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (4), CONNECTIONS (32), PHANTOM_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/benches/load
smoke=0
[ "${1:-}" = --smoke ] && smoke=1
rounds=${ROUNDS:-3}; secs=${SECONDS_PER_RUN:-4}; conns=${CONNECTIONS:-32}; ex_secs=2; tokens=50000
if [ $smoke = 1 ]; then rounds=1; secs=1; ex_secs=1; tokens=1500; fi

need() { command -v "$1" >/dev/null 2>&1; }
PATH=$PATH:/usr/sbin
if ! need nginx || ! need wrk || ! need redis-server || { [ -n "${INSTRUCTIONS:-}" ] && ! need valgrind; }; then
  apt-get install -y -qq nginx wrk redis-server valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx wrk redis-server valgrind >/dev/null; }
fi
if [ -n "${PHANTOM_BIN:-}" ]; then phantom=$PHANTOM_BIN; else cargo build --release --quiet --bin phantom; phantom=$repo/target/release/phantom; fi
cargo build --release --quiet --example exchange_load
exchange_load=$repo/target/release/examples/exchange_load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benches/load/common.sh
. "$here/common.sh"
cpu_ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
hz=$(getconf CLK_TCK)
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

"$phantom" certs dev --out "$work/certs" >/dev/null
ca=$work/certs/ca.pem
mkdir -p "$work/www" "$work/logs"
origin_port=$(free_port)
sed "s|https://127.0.0.1/|https://127.0.0.1:$origin_port/|g" "$here/packument.json" > "$work/www/pb-bench"
cat > "$work/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/logs/origin.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$origin_port ssl;
    ssl_certificate $work/certs/server.pem;
    ssl_certificate_key $work/certs/server-key.pem;
    location / {
      if (\$request_method = PUT) { return 201 '{"ok":"created"}'; }
      root $work/www; default_type application/json;
    }
  }
}
EOF
nginx -c "$work/origin.conf" -p "$work" & pids+=($!)

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port 0 --tls-port "$redis_port" --tls-cert-file "$work/certs/server.pem" \
  --tls-key-file "$work/certs/server-key.pem" --tls-ca-cert-file "$ca" --tls-auth-clients no \
  --save '' --appendonly no --dir "$work" > "$work/logs/redis.log" 2>&1 & pids+=($!); redis_pid=$!

start_issuer
for p in $origin_port $redis_port; do wait_port "$p"; done
echo "static-$(rand_hex)" > "$work/npm-token"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/audit-key"

# start NAME [STATE_TABLE]: a broker (one worker thread: the load client and Redis share the
# other core); sets the NAME_pid and NAME_port variables.
start() {
  local name=$1 state=${2:-}
  broker_config "$name" "https://127.0.0.1:$origin_port/" "$work/npm-token" "workers = 1" "$state"
  sed -i "s|^path = \"$work/$name/audit.jsonl\"|&\nkey = { file = \"$work/audit-key\" }|" "$work/$name/phantom.toml"
  local under=()
  [ -n "${INSTRUCTIONS:-}" ] && under=(valgrind --tool=callgrind --quiet --callgrind-out-file="$work/$name.callgrind")
  PHANTOM_LOG=warn "${under[@]}" "$phantom" serve --config "$work/$name/phantom.toml" > "$work/logs/$name.out" 2> "$work/logs/$name.log" &
  pids+=($!)
  printf -v "${name}_pid" %s $!
  printf -v "${name}_port" %s "$broker_port"
  wait_port "$broker_port"
}
redis_state() { printf '[state]\nbackend = "rediss://127.0.0.1:%s/0"\nca_file = "%s"\nkey_prefix = "%s:"\n' "$redis_port" "$ca" "$1"; }
start mem
start r1 "$(redis_state one)"
if [ -n "${INSTRUCTIONS:-}" ]; then
  # ring's SHA-256 runs its AVX code under valgrind (no SHA extensions there): shown apart.
  sha_blocks() { callgrind_annotate --auto=no --inclusive=no --threshold=100 "$1" | awk '/sha256_block_data_order_(avx|ssse3|nohw|hw)/ {c=$1; gsub(",","",c); s+=c} END {print s+0}'; }
  count_gets() { # NAME PID PORT -> "requests instructions sha256_instructions"
    local auth dump n
    auth="Authorization: Bearer $(curl -s --cacert "$ca" -X POST -H "Authorization: Bearer $(id_token)" -H 'content-type: application/json' \
      -d '{"packages":["pb-bench"],"actions":["publish"]}' "https://127.0.0.1:$3/-/phantom/v1/exchange" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    wrk -t1 -c8 -d3s -H "$auth" "https://127.0.0.1:$3/pb-bench" >/dev/null
    callgrind_control -z "$2" >/dev/null
    n=$(wrk -t1 -c8 -d"${secs}s" -s "$here/report.lua" -H "$auth" "https://127.0.0.1:$3/pb-bench" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
    callgrind_control -d "$2" >/dev/null
    dump=$(ls -t "$work/$1.callgrind".* | head -1)
    echo "$n $(awk '/^(summary|totals):/ {print $2; exit}' "$dump") $(sha_blocks "$dump")"
  }
  for name in mem r1; do
    pid_var=${name}_pid; port_var=${name}_port
    read -r n i sha <<<"$(count_gets "$name" "${!pid_var}" "${!port_var}")"
    python3 -c 'import sys; n,i,s=map(int,sys.argv[2:]); print(f"{sys.argv[1]:<8} {n} GETs, {i/n:,.0f} instructions per GET, {(i-s)/n:,.0f} without SHA-256 blocks")' "$name" "$n" "$i" "$sha"
  done
  exit 0
fi
start r2a "$(redis_state two)"
start r2b "$(redis_state two)"

phantom_for() { # PORT -> a phantom for pb-bench (publish), from the generic exchange
  curl -s --cacert "$ca" -X POST -H "Authorization: Bearer $(id_token)" -H 'content-type: application/json' \
    -d '{"packages":["pb-bench"],"actions":["publish"]}' "https://127.0.0.1:$1/-/phantom/v1/exchange" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
# The same phantom on both replicas: minted on one, it works on the other.
ph_mem=$(phantom_for "$mem_port"); ph_r1=$(phantom_for "$r1_port"); ph_r2=$(phantom_for "$r2a_port")
for port in $r2a_port $r2b_port; do
  curl -sf --cacert "$ca" -H "Authorization: Bearer $ph_r2" "https://127.0.0.1:$port/pb-bench" | grep -q '"pb-bench"'
done

python3 - "$work/publish.json" <<'PY'
import base64, json, sys
data = base64.b64encode(b"x" * 512).decode()
doc = {"_id": "pb-bench", "name": "pb-bench", "description": "bench", "dist-tags": {"latest": "1.0.0"},
       "versions": {"1.0.0": {"name": "pb-bench", "version": "1.0.0", "_id": "pb-bench@1.0.0",
                              "dist": {"shasum": "0", "tarball": "https://127.0.0.1/pb-bench/-/pb-bench-1.0.0.tgz"}}},
       "access": None,
       "_attachments": {"pb-bench-1.0.0.tgz": {"content_type": "application/octet-stream", "data": data, "length": 512}}}
open(sys.argv[1], "w").write(json.dumps(doc))
PY
cat > "$work/publish.lua" <<EOF
wrk.method = "PUT"
wrk.body = io.open("$work/publish.json"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["npm-command"] = "publish"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("PHANTOM")
EOF
cat "$here/report.lua" >> "$work/publish.lua"

# Each measure on one broker or, for two replicas, on both at once (half the connections each):
# prints "RATE US_PER_REQUEST" (the brokers' CPU per request, both together).
exchanges() { # PORTS PIDS
  local ports=($1) n=0 t0 t1 files=() outs=()
  for p in "${ports[@]}"; do node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" $((tokens / ${#ports[@]})) > "$work/tokens-$p.txt"; done
  t0=$(cpu_ticks "$2")
  for p in "${ports[@]}"; do
    "$exchange_load" "$p" "$work/certs/server.pem" "$work/tokens-$p.txt" "$ex_secs" $((conns / ${#ports[@]})) keep-alive > "$work/ex-$p.out" &
    files+=("$work/ex-$p.out"); outs+=($!)
  done
  wait "${outs[@]}"
  t1=$(cpu_ticks "$2")
  python3 -c 'import json,sys; t0,t1,hz=map(int,sys.argv[1:4]); d=[json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[4:]]; n=sum(x["exchanges"] for x in d); s=max(x["seconds"] for x in d); out=any(x["exchanges"]>=x["tokens"]-1 for x in d); note=" tokens-ran-out" if out else ""; print(f"{n/s:.0f} {(t1-t0)/hz/max(n,1)*1e6:.0f}{note}")' "$t0" "$t1" "$hz" "${files[@]}"
}
wrk_load() { # PORTS PIDS PHANTOM PATH CONNECTIONS [SCRIPT]
  local ports=($1) c=$5 t0 t1 files=() outs=()
  t0=$(cpu_ticks "$2")
  for p in "${ports[@]}"; do
    PHANTOM=$3 wrk -t1 -c$((c / ${#ports[@]})) -d"${secs}s" -s "${6:-$here/report.lua}" -H "Authorization: Bearer $3" \
      "https://127.0.0.1:$p$4" | tail -1 > "$work/wrk-$p.out" &
    files+=("$work/wrk-$p.out"); outs+=($!)
  done
  wait "${outs[@]}"
  t1=$(cpu_ticks "$2")
  python3 -c 'import json,sys; t0,t1,hz=map(int,sys.argv[1:4]); d=[json.loads(open(f).read()) for f in sys.argv[4:]]; n=sum(x["requests"] for x in d); e=sum(x["errors"] for x in d); s=max(x["seconds"] for x in d); note=f" errors={e}" if e else ""; print(f"{n/s:.0f} {(t1-t0)/hz/max(n,1)*1e6:.1f}{note}")' "$t0" "$t1" "$hz" "${files[@]}"
}

# One phantom may have 16 writes open at once (per replica): publishes use 16 connections.
pub_conns=16
declare -A result
configs="mem r1 r2"
for round in $(seq 1 "$rounds"); do
  for c in $configs; do
    case $c in
      mem) ports=$mem_port; bpids=$mem_pid; ph=$ph_mem ;;
      r1) ports=$r1_port; bpids=$r1_pid; ph=$ph_r1 ;;
      r2) ports="$r2a_port $r2b_port"; bpids="$r2a_pid $r2b_pid"; ph=$ph_r2 ;;
    esac
    result[$c-ex-$round]=$(exchanges "$ports" "$bpids")
    result[$c-pub-$round]=$(wrk_load "$ports" "$bpids" "$ph" /pb-bench "$pub_conns" "$work/publish.lua")
    result[$c-get-$round]=$(wrk_load "$ports" "$bpids" "$ph" /pb-bench "$conns")
    echo "round $round $c: exchanges ${result[$c-ex-$round]}; publishes ${result[$c-pub-$round]}; GETs ${result[$c-get-$round]}" >&2
  done
done

# The audit lines say the publishes were real: allowed and answered 201 by the upstream.
for name in mem r1 r2a r2b; do
  grep -q '"action":"publish".*"decision":"allow".*"upstream_status":201' "$work/$name/audit.jsonl" \
    || { echo "no allowed publish in $name's audit log" >&2; exit 1; }
done
echo
echo "state store (keep-alive; broker: 1 worker thread each; ${rounds} rounds, medians; CPU: the brokers' own per request)"
printf '%-28s %14s %10s %14s %10s %12s %10s\n' "" "exchanges/s" "CPU us" "publishes/s" "CPU us" "GETs/s" "CPU us"
for c in $configs; do
  col() { local field=$1 kind=$2 vals=(); for r in $(seq 1 "$rounds"); do read -r -a f <<<"${result[$c-$kind-$r]}"; vals+=("${f[$field]}"); done; median "${vals[@]}"; }
  case $c in mem) label="memory";; r1) label="redis, one replica";; r2) label="redis, two replicas";; esac
  printf '%-28s %14.0f %10.0f %14.0f %10.0f %12.0f %10.1f\n' "$label" "$(col 0 ex)" "$(col 1 ex)" "$(col 0 pub)" "$(col 1 pub)" "$(col 0 get)" "$(col 1 get)"
done
grep -h "tokens-ran-out\|errors=" <(for k in "${!result[@]}"; do echo "$k ${result[$k]}"; done) | sed 's/^/note: /' || true
