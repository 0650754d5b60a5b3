#!/usr/bin/env bash
# Load benchmark: keep-alive GETs of a small packument over TLS on both legs, against
#   (a) the origin directly, (b) the broker swapping a phantom per request,
#   (c) nginx injecting a static token, (d) haproxy doing the same, (e) the bare stack the broker
#   is built on (examples/bare_proxy.rs: hyper and rustls injecting a static token, no checks),
# interleaved round by round, with the same load tool (wrk) and the same upstream: a static
# nginx TLS origin, so that the upstream is never the bottleneck. Everything runs on
# 127.0.0.1 and is stopped at the end.
#
# Then, in the same run: the latency each proxy adds over direct at half of its saturation
# rate (oha, fixed rate); exchanges per second with pre-minted RS256 ID tokens, on keep-alive
# connections and with a fresh TLS connection each; a 200 MB publish through the broker and
# directly to Verdaccio (5 alternating rounds: wall time, upload time, CPU, broker peak RSS);
# 10,000 idle keep-alive connections.
#
#   bash benches/load/run.sh                 # everything (about 15 minutes)
#   bash benches/load/run.sh --smoke         # one short pass of each part: checks it all still works
#   bash benches/load/run.sh --only get      # one part: get | exchange | publish | idle
#   PROFILE=1 bash benches/load/run.sh       # perf profile of the broker under GET load, then stop
#   SYSCALLS=1 bash benches/load/run.sh      # system calls per request (strace), then stop
#   INSTRUCTIONS=1 bash benches/load/run.sh  # instructions per GET, broker and bare stack, counted
#                                            # by callgrind (repeatable: for before/after figures);
#                                            # with --only exchange, instructions per exchange
#   PROFILE=exchange | PROFILE=publish | SYSCALLS=publish, with --only exchange or --only publish
#   PERF_CALL_GRAPH="--call-graph dwarf" PERF_OUT=/tmp/perf.data, with PROFILE: call stacks kept
#                                            # (dwarf samples copy stack memory: the file can hold
#                                            # this run's phantoms and its benchmark-only token)
#   PHANTOM_BIN=/path/to/phantom bash ...    # measure another build (before/after comparisons)
#   HOLD=SECONDS bash benches/load/run.sh    # start everything, print its ports, pids and phantom,
#                                            # and keep it up that long (for measuring by hand)
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (10), CONNECTIONS (50), THREADS (2), PUBLISH_MB (200),
# PUBLISH_ROUNDS (5), TARGETS ("direct broker nginx haproxy bare"; add bare-conn, nginx-log), NO_LATENCY.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/benches/load

smoke=0
only=all
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) smoke=1; shift ;;
    --only) only=${2:?"--only needs one of: get exchange publish idle"}; shift 2 ;;
    *) echo "unknown argument: $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
part() { [ "$only" = all ] || [ "$only" = "$1" ]; }
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-10}
conns=${CONNECTIONS:-50}
threads=${THREADS:-2}
publish_mb=${PUBLISH_MB:-200}
publish_rounds=${PUBLISH_ROUNDS:-5}   # Verdaccio's own time varies by a second from run to run
targets=${TARGETS:-direct broker nginx haproxy bare}
idle_conns=10000
if [ $smoke = 1 ]; then rounds=1; secs=2; publish_mb=4; publish_rounds=1; idle_conns=200; fi

need() { command -v "$1" >/dev/null 2>&1; }
PATH=$PATH:/usr/sbin:$HOME/.cargo/bin
if ! need nginx || ! need haproxy || ! need wrk; then
  echo "installing nginx, haproxy and wrk" >&2
  apt-get install -y -qq nginx haproxy wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx haproxy wrk >/dev/null; }
fi
if [ -n "${INSTRUCTIONS:-}" ] && ! need valgrind; then
  apt-get install -y -qq valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
fi
# INSTRUCTIONS=1 runs the broker and the bare stack under callgrind, which counts every
# instruction they execute: the same binary on the same load gives the same count within a
# fraction of a percent, however noisy the machine, where req/s and CPU seconds vary by 10-20%.
# Counted: the GET broker and the bare stack, or with --only exchange the exchange's broker alone.
counting=""
if [ -n "${INSTRUCTIONS:-}" ]; then if [ "$only" = exchange ]; then counting=exchange; else counting="get bare"; fi; fi
counted() { # NAME COMMAND...: run in the background; under callgrind if NAME is counted
  local name=$1; shift
  if [[ " $counting " == *" $name "* ]]; then exec valgrind --tool=callgrind --quiet --callgrind-out-file="$work/$name.callgrind" "$@"; fi
  exec "$@"
}
# The load client's own CPU: it shares the 2 cores with what it measures, so what it spends is
# CPU the proxy did not get. `loaded CMD...` runs a load client and leaves its CPU seconds (user
# and system, from the kernel's account of the waited-for child, over its whole life: wrk's
# reading of its token file included) in the file $work/client-cpu.
loaded() {
  rm -f "$work/client-cpu"
  python3 -c 'import resource,subprocess,sys; r=subprocess.run(sys.argv[2:]); u=resource.getrusage(resource.RUSAGE_CHILDREN); open(sys.argv[1],"w").write(f"{u.ru_utime+u.ru_stime:.3f}\n"); sys.exit(r.returncode)' "$work/client-cpu" "$@"
}
if ! need oha && [ $smoke = 0 ] && [ -z "${NO_LATENCY:-}${INSTRUCTIONS:-}${PROFILE:-}${SYSCALLS:-}${HOLD:-}" ] && { [ "$only" = all ] || [ "$only" = get ]; }; then
  echo "installing oha, the fixed-rate load tool (several minutes)" >&2
  cargo install oha --locked --quiet
fi
if [ -n "${PHANTOM_BIN:-}" ]; then
  phantom=$PHANTOM_BIN   # e.g. a build of an earlier commit, for before/after figures
else
  cargo build --release --quiet --bin phantom
  phantom=$repo/target/release/phantom
fi
# The load client for exchanges: with full TLS handshakes (wrk resumes TLS sessions), and a
# keep-alive one that costs less than wrk per exchange.
cargo build --release --quiet --example exchange_load --example bare_proxy
exchange_load=$repo/target/release/examples/exchange_load
bare_proxy=$repo/target/release/examples/bare_proxy
if [ ! -x "$repo/tests/node/node_modules/.bin/verdaccio" ]; then (cd "$repo/tests/node" && npm ci --no-audit --no-fund --loglevel=error); fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
chmod 755 "$work"   # nginx workers drop to an unprivileged user
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/load/common.sh
. "$here/common.sh"
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
peak_rss_kb() { local t=0; for p in $1; do t=$((t + $(hwm_kb "$p"))); done; echo $t; }
hz=$(getconf CLK_TCK)
report=$work/report.txt
say() { echo "$*" | tee -a "$report" >&2; }

"$phantom" certs dev --out "$work/certs" >/dev/null
ca=$work/certs/ca.pem
cat "$work/certs/server.pem" "$work/certs/server-key.pem" > "$work/certs/haproxy.pem"
mkdir -p "$work/www" "$work/logs"
origin_port=$(free_port); nginx_port=$(free_port); haproxy_port=$(free_port)
# Its tarball URL names the origin, as a registry writes it: the broker rewrites it onto itself.
sed "s|https://127.0.0.1/|https://127.0.0.1:$origin_port/|g" "$here/packument.json" > "$work/www/pb-bench"
token=static-$RANDOM$RANDOM

# The origin: nginx serving the packument over TLS, two workers.
cat > "$work/origin.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/origin.pid;
error_log $work/logs/origin.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$origin_port ssl;
    ssl_certificate $work/certs/server.pem;
    ssl_certificate_key $work/certs/server-key.pem;
    location / { root $work/www; default_type application/json; }
  }
}
EOF
nginx -c "$work/origin.conf" -p "$work" & pids+=($!)

# (c) nginx injecting a static token, with an upstream keep-alive pool.
cat > "$work/nginx-proxy.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx-proxy.pid;
error_log $work/logs/nginx-proxy.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:$origin_port; keepalive 128; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $work/certs/server.pem;
    ssl_certificate_key $work/certs/server-key.pem;
    location / {
      proxy_pass https://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $token";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $ca;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
nginx -c "$work/nginx-proxy.conf" -p "$work" & pids+=($!)
# (c') `nginx-log` (TARGETS="... nginx-log"): the same proxy writing nginx's default access log,
# one line per request as the broker writes an audit line (nginx's own default is to log).
nginx_log_port=$(free_port)
if [[ " $targets " == *" nginx-log "* ]]; then
  sed -e "s/127.0.0.1:$nginx_port /127.0.0.1:$nginx_log_port /; s|nginx-proxy.pid|nginx-log.pid|; s|nginx-proxy.log|nginx-log.log|" \
    -e "s|access_log off;|access_log $work/logs/nginx-access.log;|" "$work/nginx-proxy.conf" > "$work/nginx-log.conf"
  nginx -c "$work/nginx-log.conf" -p "$work" & pids+=($!)
fi

# (d) haproxy injecting a static token.
cat > "$work/haproxy.cfg" <<EOF
global
  maxconn 8000
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$haproxy_port ssl crt $work/certs/haproxy.pem
  http-request set-header Authorization "Bearer $token"
  default_backend b
backend b
  server o 127.0.0.1:$origin_port ssl verify required ca-file $ca sni str(localhost) verifyhost localhost
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/logs/haproxy.log" 2>&1 & pids+=($!)

# (e) the floor of the broker's own stack (examples/bare_proxy.rs): hyper and rustls with the
# broker's TLS configs and threads, injecting a static token like (c) and (d), checking nothing.
# `bare` pools upstream connections with hyper-util's client, as the broker does; `bare-conn`
# (TARGETS="... bare-conn") with a per-worker pool of hyper's own connections.
bare_port=$(free_port); bare_conn_port=$(free_port)
counted bare "$bare_proxy" "$bare_port" "$work/certs/server.pem" "$work/certs/server-key.pem" "$origin_port" "$ca" "Bearer $token" legacy & pids+=($!); bare_pid=$!
"$bare_proxy" "$bare_conn_port" "$work/certs/server.pem" "$work/certs/server-key.pem" "$origin_port" "$ca" "Bearer $token" conn & pids+=($!); bare_conn_pid=$!

# The loopback OIDC issuer (tests/node) that stands in for GitHub's.
start_issuer

# start_broker NAME UPSTREAM_URL CREDENTIAL_FILE [EXTRA_SERVER_LINES]: sets broker_pid, broker_port.
start_broker() {
  local name=$1
  broker_config "$@"
  PHANTOM_LOG=warn counted "$name" "$phantom" serve --config "$work/$name/phantom.toml" > "$work/logs/$name.out" 2> "$work/logs/$name.log" &
  broker_pid=$!
  pids+=($broker_pid)
  wait_port "$broker_port"
}
phantom_for() { # PORT PACKAGE -> a phantom from the generic exchange
  curl -s --cacert "$ca" -X POST -H "Authorization: Bearer $(id_token)" -H 'content-type: application/json' \
    -d "{\"packages\":[\"$2\"],\"actions\":[\"publish\"]}" "https://127.0.0.1:$1/-/phantom/v1/exchange" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

echo "$token" > "$work/npm-token"
start_broker get "https://127.0.0.1:$origin_port/" "$work/npm-token"
get_pid=$broker_pid; get_port=$broker_port
for p in $origin_port $nginx_port $haproxy_port $bare_port $bare_conn_port; do wait_port "$p"; done
if [[ " $targets " == *" nginx-log "* ]]; then
  wait_port "$nginx_log_port"
  curl -sf --cacert "$ca" "https://127.0.0.1:$nginx_log_port/pb-bench" | grep -q '"pb-bench"'
  # It does log (the line is written after the response, so allow it a moment).
  for _ in $(seq 1 50); do grep -qs 'GET /pb-bench' "$work/logs/nginx-access.log" && break; sleep 0.02; done
  grep -q 'GET /pb-bench' "$work/logs/nginx-access.log"
fi
idle_rss_kb=$(rss_kb "$get_pid")
phantom_token=$(phantom_for "$get_port" pb-bench)

# Sanity: each target serves the packument.
for url in "https://127.0.0.1:$origin_port/pb-bench" "https://127.0.0.1:$nginx_port/pb-bench" "https://127.0.0.1:$haproxy_port/pb-bench" \
    "https://127.0.0.1:$bare_port/pb-bench" "https://127.0.0.1:$bare_conn_port/pb-bench"; do
  curl -sf --cacert "$ca" "$url" | grep -q '"pb-bench"'
done
curl -sf --cacert "$ca" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$get_port/pb-bench" | grep -q '"pb-bench"'

# SYSCALLS=1: the broker's system calls per request under load (strace slows it down).
if [ -n "${SYSCALLS:-}" ] && [ "$SYSCALLS" != publish ]; then
  timeout 6 strace -c -f -p "$get_pid" -o "$work/strace.txt" &
  strace_pid=$!
  sleep 0.5
  n=$(wrk -t"$threads" -c"$conns" -d4s -s "$here/report.lua" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$get_port/pb-bench" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  wait $strace_pid || true
  echo "requests: $n"
  awk -v n="$n" 'NR>2 && $NF!="total" && $4+0>0 {printf "%-16s %8.2f per request\n", $NF, $4/n}' "$work/strace.txt" | sort -k2 -nr | head -12
  exit 0
fi

if [ -n "${HOLD:-}" ]; then
  printf 'work=%s\nca=%s\nbroker_port=%s\nbroker_pid=%s\nbare_port=%s\nbare_pid=%s\nnginx_port=%s\norigin_port=%s\nphantom=%s\n' \
    "$work" "$ca" "$get_port" "$get_pid" "$bare_port" "$bare_pid" "$nginx_port" "$origin_port" "$phantom_token"
  sleep "$HOLD"
  exit 0
fi

# INSTRUCTIONS=1: instructions per keep-alive GET, the broker's and the bare stack's, counted by
# callgrind over a window of wrk load (warmed up first; the counters are zeroed at its start).
# ring's SHA-256 runs its AVX code under valgrind, which has no SHA extensions; where the CPU has
# them (this one does), natively it is several times cheaper. So its blocks are shown apart.
sha_blocks() { # CALLGRIND_DUMP -> instructions in SHA-256 block functions
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$1" | awk '/sha256_block_data_order_(avx|ssse3|nohw|hw)/ {c=$1; gsub(",","",c); s+=c} END {print s+0}'
}
listing() { # CALLGRIND_DUMP COUNT MIN_PER_UNIT -> inclusive instructions per unit, by function
  callgrind_annotate --auto=no --inclusive=yes --threshold=99 "$1" 2>/dev/null \
    | awk -v n="$2" -v min="$3" -v top="${TOP:-60}" '/^ *[0-9,]+ / {c=$1; gsub(",","",c); $1=""; if (c/n >= min && shown++ < top) printf "%9.0f %s\n", c/n, substr($0, 1, 160)}'
}
if [ -n "${INSTRUCTIONS:-}" ] && [ "$only" = exchange ]; then
  # Instructions per npm exchange (keep-alive, RS256): a fresh broker under callgrind, warmed up
  # with tokens of its own, then counted over a window with as many tokens as it can take.
  # Under callgrind the broker takes about 550 exchanges a second here: the tokens allow 2,000.
  n_warm=2000; n_count=$(( secs * 2000 ))
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_warm" > "$work/tokens-warm.txt"
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_count" > "$work/tokens-count.txt"
  start_broker exchange "https://127.0.0.1:$origin_port/" "$work/npm-token"
  TOKENS=$work/tokens-warm.txt WRK_THREADS=1 wrk -t1 -c8 -d1s -s "$here/exchange.lua" "https://127.0.0.1:$broker_port/" >/dev/null
  callgrind_control -z "$broker_pid" >/dev/null
  ex=$(TOKENS=$work/tokens-count.txt WRK_THREADS=1 wrk -t1 -c8 -d"${secs}s" -s "$here/exchange.lua" "https://127.0.0.1:$broker_port/" | tail -1)
  callgrind_control -d "$broker_pid" >/dev/null
  dump=$(ls -t "$work/exchange.callgrind".* | head -1)
  [ -n "${CALLGRIND_OUT:-}" ] && cp "$dump" "${CALLGRIND_OUT}.exchange"
  n=$(json "$ex" exchanges)
  if [ "$(json "$ex" refused)" != 0 ] || [ "$(json "$ex" errors)" != 0 ] || [ "$n" -ge "$n_count" ] || [ "$n" -eq 0 ]; then
    echo "no clean window of exchanges (tokens ran out, were refused, or requests failed): $ex" >&2; exit 1
  fi
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  sha=$(sha_blocks "$dump")
  echo "broker: $n exchanges, $(( total / n )) instructions per exchange, $(( (total - sha) / n )) without SHA-256 blocks ($(( sha / n )))"
  echo "== the broker's functions by instructions per exchange, inclusive (callgrind_annotate)"
  listing "$dump" "$n" 1000
  exit 0
fi
if [ -n "${INSTRUCTIONS:-}" ]; then
  count_gets() { # NAME PID URL AUTH -> "requests instructions sha256_block_instructions"
    wrk -t1 -c8 -d3s -H "$4" "$3" >/dev/null
    callgrind_control -z "$2" >/dev/null
    local n
    n=$(wrk -t1 -c8 -d"${secs}s" -s "$here/report.lua" -H "$4" "$3" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
    callgrind_control -d "$2" >/dev/null
    local dump
    dump=$(ls -t "$work/$1.callgrind".* | head -1)
    cp "$dump" "$work/$1.window"
    [ -n "${CALLGRIND_OUT:-}" ] && cp "$dump" "${CALLGRIND_OUT}.$1"
    local sha
    sha=$(sha_blocks "$dump")
    echo "$n $(awk '/^(summary|totals):/ {print $2; exit}' "$dump") $sha"
  }
  read -r bn bi bsha <<<"$(count_gets get "$get_pid" "https://127.0.0.1:$get_port/pb-bench" "Authorization: Bearer $phantom_token")"
  read -r sn si ssha <<<"$(count_gets bare "$bare_pid" "https://127.0.0.1:$bare_port/pb-bench" "X-None: 1")"
  python3 - "$bn" "$bi" "$bsha" "$sn" "$si" "$ssha" <<'PY'
import sys
bn, bi, bsha, sn, si, ssha = map(int, sys.argv[1:])
b, s, b_sha, s_sha = bi / bn, si / sn, bsha / bn, ssha / sn
print(f"broker: {bn} GETs, {b:,.0f} instructions per GET, {b - b_sha:,.0f} without SHA-256 blocks ({b_sha:,.0f})")
print(f"bare:   {sn} GETs, {s:,.0f} instructions per GET, {s - s_sha:,.0f} without SHA-256 blocks ({s_sha:,.0f})")
print(f"broker/bare {b / s:.2f}x, {(b - b_sha) / (s - s_sha):.2f}x without SHA-256 blocks; "
      f"the broker's own work {b - s:,.0f} instructions per GET, {(b - b_sha) - (s - s_sha):,.0f} without")
PY
  echo "== the broker's functions by instructions per GET, inclusive (callgrind_annotate)"
  listing "$work/get.window" "$bn" 300
  exit 0
fi

# PROFILE=1: sample the broker under load with perf (cpu-clock) and print where its time goes
# (PROFILE=exchange: the same for the exchange part).
if [ -n "${PROFILE:-}" ] && [ "$PROFILE" != exchange ] && [ "$PROFILE" != publish ]; then
  perf record -e cpu-clock -F 1999 ${PERF_CALL_GRAPH:--g} -o "$work/perf.data" -p "$get_pid" -- sleep "$secs" >/dev/null 2>&1 &
  perf_pid=$!
  wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$here/report.lua" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$get_port/pb-bench" | tail -1
  wait $perf_pid || true
  [ -n "${PERF_OUT:-}" ] && cp "$work/perf.data" "$PERF_OUT"
  echo "== by binary"
  perf report -i "$work/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | head -12
  echo "== by symbol"
  perf report -i "$work/perf.data" --stdio --no-children --percent-limit 0.6 --sort dso,symbol -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | cut -c1-150 | head -60
  exit 0
fi

say "phantom-broker load benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(uname -r)"
say "$(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(oha --version)"

pids_of() { # the processes whose CPU and memory count for a target
  case $1 in
    direct) echo "$(cat "$work/origin.pid") $(pgrep -P "$(cat "$work/origin.pid")" | tr '\n' ' ')" ;;
    broker) echo "$get_pid" ;;
    nginx) echo "$(cat "$work/nginx-proxy.pid") $(pgrep -P "$(cat "$work/nginx-proxy.pid")" | tr '\n' ' ')" ;;
    nginx-log) echo "$(cat "$work/nginx-log.pid") $(pgrep -P "$(cat "$work/nginx-log.pid")" | tr '\n' ' ')" ;;
    haproxy) pgrep -f "haproxy -f $work/haproxy.cfg" | tr '\n' ' ' ;;
    bare) echo "$bare_pid" ;;
    bare-conn) echo "$bare_conn_pid" ;;
  esac
}
url_of() {
  case $1 in
    direct) echo "https://127.0.0.1:$origin_port/pb-bench" ;;
    broker) echo "https://127.0.0.1:$get_port/pb-bench" ;;
    nginx) echo "https://127.0.0.1:$nginx_port/pb-bench" ;;
    nginx-log) echo "https://127.0.0.1:$nginx_log_port/pb-bench" ;;
    haproxy) echo "https://127.0.0.1:$haproxy_port/pb-bench" ;;
    bare) echo "https://127.0.0.1:$bare_port/pb-bench" ;;
    bare-conn) echo "https://127.0.0.1:$bare_conn_port/pb-bench" ;;
  esac
}
auth_of() { [ "$1" = broker ] && echo "Authorization: Bearer $phantom_token" || echo "X-None: 1"; }

# --- 1. keep-alive GET throughput, interleaved rounds -------------------------------------
results=$work/results.jsonl
if part get; then
  for round in $(seq 1 "$rounds"); do
    for target in $targets; do
      procs=$(pids_of $target); origin=$(pids_of direct)
      before=$(cpu_ticks "$procs"); origin_before=$(cpu_ticks "$origin")
      line=$(loaded wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$here/report.lua" -H "$(auth_of $target)" "$(url_of $target)" | tail -1)
      after=$(cpu_ticks "$procs"); origin_after=$(cpu_ticks "$origin")
      python3 - "$line" "$target" "$round" "$((after - before))" "$hz" "$(peak_rss_kb "$procs")" "$(cat "$work/client-cpu")" "$((origin_after - origin_before))" >> "$results" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update(target=sys.argv[2], round=int(sys.argv[3]))
per_10k = 10000 / max(r["requests"], 1)
r["cpu_s_per_10k"] = int(sys.argv[4]) / int(sys.argv[5]) * per_10k
r["peak_rss_mb"] = int(sys.argv[6]) / 1024
# What else ran on the same cores: the load client, and the origin behind a proxy.
r["wrk_cpu_s_per_10k"] = float(sys.argv[7]) * per_10k
r["origin_cpu_s_per_10k"] = int(sys.argv[8]) / int(sys.argv[5]) * per_10k
print(json.dumps(r))
PY
      echo "round $round $target: $(tail -1 "$results")" >&2
    done
  done
  python3 - "$results" "$idle_rss_kb" "$conns" "$secs" "$targets" >> "$report" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
targets = sys.argv[5].split()
med = lambda t, k: statistics.median(r[k] for r in rows if r["target"] == t)
print(f"\n1. keep-alive GET of a 989-byte packument, TLS on both legs, wrk {sys.argv[3]} connections, "
      f"{sys.argv[4]} s per run; medians of {max(r['round'] for r in rows)} interleaved rounds")
print(f"{'target':9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'CPU s/10k':>9} {'peak RSS MB':>11} {'errors':>6}")
for t in targets:
    print(f"{t:9} {med(t,'rps'):8.0f} {med(t,'p50')/1000:7.2f} {med(t,'p99')/1000:7.2f} {med(t,'p999')/1000:8.2f} "
          f"{med(t,'cpu_s_per_10k'):9.3f} {max(r['peak_rss_mb'] for r in rows if r['target']==t):11.1f} {sum(r['errors'] for r in rows if r['target']==t):6d}")
if {"broker", "nginx", "haproxy"} <= set(targets):
    print(f"broker/nginx throughput {med('broker','rps')/med('nginx','rps'):.2f}x, broker/haproxy {med('broker','rps')/med('haproxy','rps'):.2f}x; "
          f"broker p99 {med('broker','p99')/1000:.2f} ms vs nginx {med('nginx','p99')/1000:.2f} ms")
if {"broker", "nginx-log"} <= set(targets):
    print(f"broker/nginx-log throughput {med('broker','rps')/med('nginx-log','rps'):.2f}x, CPU per request "
          f"{med('broker','cpu_s_per_10k')/med('nginx-log','cpu_s_per_10k'):.2f}x; broker p99 {med('broker','p99')/1000:.2f} ms vs nginx-log {med('nginx-log','p99')/1000:.2f} ms")
for b in [t for t in targets if t.startswith("bare") and {"broker", "nginx"} <= set(targets)]:
    print(f"{b}/nginx throughput {med(b,'rps')/med('nginx','rps'):.2f}x; broker/{b} {med('broker','rps')/med(b,'rps'):.2f}x; "
          f"CPU per request, broker/{b} {med('broker','cpu_s_per_10k')/med(b,'cpu_s_per_10k'):.2f}x, {b}/nginx {med(b,'cpu_s_per_10k')/med('nginx','cpu_s_per_10k'):.2f}x")
# The cores' budget. Each row's CPU per request, with the load client's and the origin's beside
# it: together they are what 2 cores spent per request, so a proxy's rate follows its own share.
print("CPU s per 10k requests on the shared cores (medians): " + "; ".join(
    f"{t} {med(t,'cpu_s_per_10k') if t != 'direct' else 0:.3f} + wrk {med(t,'wrk_cpu_s_per_10k'):.3f} + origin {med(t,'origin_cpu_s_per_10k'):.3f}"
    for t in targets))
if {"broker", "nginx"} <= set(targets):
    # At 1.25 x nginx's rate, with the cores as busy as in an nginx round and the load client and
    # the origin costing per request what they did in it, what is left per request for a proxy:
    # (nginx + wrk + origin) / 1.25 - (wrk + origin), i.e. 0.8 nginx - 0.2 (wrk + origin); the
    # rate itself cancels out. Round by round, since the three move together.
    lefts = sorted(0.8 * r["cpu_s_per_10k"] - 0.2 * (r["wrk_cpu_s_per_10k"] + r["origin_cpu_s_per_10k"]) for r in rows if r["target"] == "nginx")
    extra = f", the bare stack {med('bare','cpu_s_per_10k'):.3f}" if "bare" in targets else ""
    print(f"1.25 x nginx's rate, the cores as busy as in its rounds, leaves a proxy {statistics.median(lefts):.3f} CPU s per 10k requests "
          f"({lefts[0]:.3f}-{lefts[-1]:.3f} by round): the broker spends {med('broker','cpu_s_per_10k'):.3f}, nginx {med('nginx','cpu_s_per_10k'):.3f}{extra}")
print(f"broker idle RSS before any load: {int(sys.argv[2])/1024:.1f} MB")
PY

  # Added latency at about half of each proxy's saturation rate, against direct at the same rate.
  if [ -n "${NO_LATENCY:-}" ]; then
    :
  elif ! need oha; then
    echo "   (half-load latency skipped: oha is not installed; the smoke pass does not install it)" >> "$report"
  else
  oha_at() { # RATE URL AUTH -> "p50_us p99_us"
    oha -z "${secs}s" -q "$1" -c "$conns" --latency-correction --no-tui --output-format json --cacert "$ca" -H "$3" "$2" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin)["latencyPercentiles"]; print(round(d["p50"]*1e6), round(d["p99"]*1e6))'
  }
  echo >> "$report"
  echo "   latency added over direct at about half of each proxy's saturation rate (oha, fixed rate, ${secs} s):" >> "$report"
  for target in $targets; do
    case $target in direct|bare*) continue ;; esac
    rate=$(python3 -c 'import json,statistics,sys; print(int(statistics.median(json.loads(l)["rps"] for l in open(sys.argv[1]) if json.loads(l)["target"]==sys.argv[2])/2))' "$results" $target)
    read -r p50 p99 <<<"$(oha_at "$rate" "$(url_of $target)" "$(auth_of $target)")"
    read -r d50 d99 <<<"$(oha_at "$rate" "$(url_of direct)" "X-None: 1")"
    printf '   %-8s at %6d req/s: p50 %5d us (direct %5d, %+6d)   p99 %6d us (direct %6d, %+7d)\n' \
      "$target" "$rate" "$p50" "$d50" $((p50 - d50)) "$p99" "$d99" $((p99 - d99)) >> "$report"
  done
  fi
fi

# --- 2. exchanges per second ---------------------------------------------------------------
if part exchange; then
  # Each token is good for one exchange: enough for ~40k/s on keep-alive, ~30k/s resumed, ~6k/s full.
  ex_secs=$(( smoke ? 1 : 3 ))
  n_ka=$(( smoke ? 1000 : 120000 )); n_lean=$(( smoke ? 1000 : 120000 )); n_fresh=$(( smoke ? 1000 : 90000 )); n_full=$(( smoke ? 500 : 20000 ))
  started=$(date +%s.%N)
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_ka" > "$work/tokens-ka.txt"
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_lean" > "$work/tokens-lean.txt"
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_fresh" > "$work/tokens-fresh.txt"
  node "$here/mint.mjs" "$work/issuer/rsa.pem" "$issuer_url" "npm:127.0.0.1" "$n_full" > "$work/tokens-full.txt"
  minted_in=$(python3 -c "import time; print(round(time.time()-$started,1))")
  # A fresh broker: every exchange adds a phantom and a replay-cache entry.
  start_broker exchange "https://127.0.0.1:$origin_port/" "$work/npm-token"
  if [ "${PROFILE:-}" = exchange ]; then
    perf record -e cpu-clock -F 1999 ${PERF_CALL_GRAPH:--g} -o "$work/perf.data" -p "$broker_pid" -- sleep "$ex_secs" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  # The broker's CPU per exchange, as with full handshakes below: what one core could serve.
  # The client's CPU: wrk's from `loaded`, exchange_load's from its own report.
  per_exchange() { # JSON TICKS_BEFORE CLIENT CLIENT_CPU_S -> "broker CPU ..., CLIENT CPU ... per exchange"
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); b=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]); n=max(d["exchanges"],1); c=float(sys.argv[6]); print(f"broker CPU {b:.2f} s ({b/n*1e6:.0f} us per exchange: {n/b:.0f}/s per core), {sys.argv[5]} CPU {c:.2f} s ({c/n*1e6:.0f} us per exchange)")' "$1" "$2" "$(cpu_ticks "$broker_pid")" "$hz" "$3" "$4"
  }
  t0=$(cpu_ticks "$broker_pid")
  ka=$(TOKENS=$work/tokens-ka.txt WRK_THREADS=$threads loaded wrk -t"$threads" -c"$conns" -d"${ex_secs}s" -s "$here/exchange.lua" "https://127.0.0.1:$broker_port/" | tail -1)
  ka_cpu=$(per_exchange "$ka" "$t0" wrk "$(cat "$work/client-cpu")")
  if [ "${PROFILE:-}" = exchange ]; then
    wait $perf_pid || true
    [ -n "${PERF_OUT:-}" ] && cp "$work/perf.data" "$PERF_OUT"
    echo "$ka"
    perf report -i "$work/perf.data" --stdio --no-children --percent-limit 0.8 --sort dso,symbol -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | cut -c1-150 | head -40
    exit 0
  fi
  # The same keep-alive load from a client that spends less of the shared cores: every request
  # is written out before the clock starts, where wrk calls a Lua function per request. On a
  # fresh broker too, so that neither client meets a broker that the other has filled.
  kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
  start_broker exchange-lean "https://127.0.0.1:$origin_port/" "$work/npm-token"
  t0=$(cpu_ticks "$broker_pid")
  lean=$("$exchange_load" "$broker_port" "$work/certs/server.pem" "$work/tokens-lean.txt" "$ex_secs" "$conns" keep-alive | tail -1)
  lean_cpu=$(per_exchange "$lean" "$t0" "load client" "$(json "$lean" client_cpu_s)")
  # A fresh TLS connection per exchange: wrk reconnects after every response when asked to close.
  # wrk keeps its TLS session across reconnects, so these handshakes are resumptions.
  t0=$(cpu_ticks "$broker_pid")
  fresh=$(TOKENS=$work/tokens-fresh.txt WRK_THREADS=$threads loaded wrk -t"$threads" -c"$conns" -d"${ex_secs}s" -H "Connection: close" -s "$here/exchange.lua" "https://127.0.0.1:$broker_port/" | tail -1)
  fresh_cpu=$(per_exchange "$fresh" "$t0" wrk "$(cat "$work/client-cpu")")
  # Full handshakes: a client that keeps no TLS sessions (it counts any resumed, to prove it) and,
  # like wrk, verifies no signatures. Its own key exchange still shares the 2 cores, so the CPU
  # each side spent is reported too: the broker's per exchange bounds what it could serve.
  t0=$(cpu_ticks "$broker_pid")
  full=$("$exchange_load" "$broker_port" "$work/certs/server.pem" "$work/tokens-full.txt" "$ex_secs" "$conns" | tail -1)
  full_cpu=$(per_exchange "$full" "$t0" "load client" "$(json "$full" client_cpu_s)")
  exhausted() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(" (tokens ran out: the rate is a lower bound)" if d["exchanges"] >= d["tokens"] - 1 or d["refused"] > 0 else "")' "$1"; }
  {
    echo
    echo "2. npm's exchange with RS256 ID tokens, each used once ($((n_ka + n_lean + n_fresh + n_full)) pre-minted in ${minted_in} s, outside the timed window); ECDSA P-256 server certificate"
    echo "   keep-alive connections (wrk):                $ka$(exhausted "$ka")"
    echo "      $ka_cpu"
    echo "   keep-alive connections (exchange_load):      $lean$(exhausted "$lean")"
    echo "      $lean_cpu"
    echo "   a new connection each, TLS resumed (wrk):     $fresh$(exhausted "$fresh")"
    echo "      $fresh_cpu"
    echo "   a new connection each, full TLS handshake:   $full$(exhausted "$full")"
    echo "      $full_cpu"
  } >> "$report"
fi

# --- 3. a 200 MB publish, streamed ------------------------------------------------------------
if part publish; then
  start_verdaccio 1024mb
  echo "$vtoken" > "$work/verdaccio-token"
  start_broker publish "https://127.0.0.1:$vport/" "$work/verdaccio-token" "max_body_bytes = $(( (publish_mb * 4 / 3 + 16) * 1024 * 1024 ))"
  pub_pid=$broker_pid; pub_port=$broker_port
  # Bodies as npm builds them (base64 tarball in _attachments). Every publish creates a new
  # package (Verdaccio is slower to add a version to an existing one), and the rounds alternate
  # which goes first; the figures are medians.
  python3 - "$work" "$publish_mb" "$publish_rounds" <<'PY'
import base64, os, sys
work, mb, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = base64.b64encode(os.urandom(mb * 1024 * 1024))
for r in range(1, rounds + 1):
    for who in ("d", "b"):
        name = f"@bench/big-{who}{r}"
        with open(f"{work}/body-{who}{r}.json", "wb") as f:
            f.write(('{"_id":"%s","name":"%s","description":"big","dist-tags":{"latest":"1.0.0"},'
                     '"versions":{"1.0.0":{"name":"%s","version":"1.0.0","_id":"%s@1.0.0"}},"access":null,'
                     '"_attachments":{"%s-1.0.0.tgz":{"content_type":"application/octet-stream","length":%d,"data":"'
                     % (name, name, name, name, name, len(data) * 3 // 4)).encode())
            f.write(data)
            f.write(b'"}}}')
PY
  body_mb=$(( $(stat -c %s "$work/body-d1.json") / 1024 / 1024 ))
  put() { # URL AUTH BODY -> "status seconds"
    curl -s -o /dev/null -w '%{http_code} %{time_total}' --cacert "$ca" -X PUT -H "Authorization: Bearer $2" \
      -H 'content-type: application/json' -H 'npm-command: publish' --data-binary "@$3" "$1"
  }
  before_kb=$(hwm_kb "$pub_pid")
  idle_kb=$(rss_kb "$pub_pid")
  pub_times=()
  cpu_b=0; cpu_v_d=0; cpu_v_b=0
  for round in $(seq 1 "$publish_rounds"); do
    phantom_b=$(phantom_for "$pub_port" "@bench/big-b$round")
    order="d b"; [ $((round % 2)) = 0 ] && order="b d"
    for who in $order; do
      b0=$(cpu_ticks "$pub_pid"); v0=$(cpu_ticks "$vpid")
      if [ "${PROFILE:-}" = publish ] && [ $who = b ] && [ $round = 1 ]; then
        perf record -e cpu-clock -F 1999 ${PERF_CALL_GRAPH:--g} -o "$work/perf.data" -p "$pub_pid" -- sleep 4 >/dev/null 2>&1 &
      fi
      if [ "${SYSCALLS:-}" = publish ] && [ $who = b ] && [ $round = 1 ]; then
        timeout 20 strace -c -f -p "$pub_pid" -o "$work/strace.txt" & strace_pid=$!
        sleep 0.5
      fi
      # When Verdaccio has read the whole body off its socket: the upload, without its processing.
      # The counter's start is read here, before curl starts; curl waits for the sampler.
      rm -f "$work/upload-stop" "$work/upload-ready"
      python3 - "$vpid" "$(stat -c %s "$work/body-$who$round.json")" "$(awk '/^rchar/ {print $2}' "/proc/$vpid/io")" \
        "$work/upload-stop" > "$work/upload-time" <<'PY' &
import os, sys, time
pid, size, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rchar():
    with open(f"/proc/{pid}/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("rchar"))
t0 = time.time()  # curl starts as soon as this file exists
open(stop.replace("stop", "ready"), "w").close()
while rchar() - start < size:
    if os.path.exists(stop):  # the publish ended first: no reading
        print("nan")
        sys.exit()
    time.sleep(0.002)
print(f"{time.time() - t0:.2f}")
PY
      sampler=$!
      for _ in $(seq 1 200); do [ -e "$work/upload-ready" ] && break; sleep 0.01; done
      if [ $who = d ]; then
        read -r status secs_taken <<<"$(put "https://127.0.0.1:$vport/@bench%2fbig-d$round" "$vtoken" "$work/body-d$round.json")"
      else
        read -r status secs_taken <<<"$(put "https://127.0.0.1:$pub_port/@bench%2fbig-b$round" "$phantom_b" "$work/body-b$round.json")"
      fi
      touch "$work/upload-stop"; wait $sampler || true
      if [ "${SYSCALLS:-}" = publish ] && [ $who = b ] && [ $round = 1 ]; then
        kill -INT $strace_pid; wait $strace_pid || true
        head -20 "$work/strace.txt"
      fi
      pub_times+=("$who $round $status $secs_taken $(cat "$work/upload-time")")
      cpu_b=$((cpu_b + $(cpu_ticks "$pub_pid") - b0))
      if [ $who = d ]; then cpu_v_d=$((cpu_v_d + $(cpu_ticks "$vpid") - v0)); else cpu_v_b=$((cpu_v_b + $(cpu_ticks "$vpid") - v0)); fi
    done
  done
  after_kb=$(hwm_kb "$pub_pid")
  {
    echo
    echo "3. publish of a ${publish_mb} MB tarball (${body_mb} MB JSON body) to Verdaccio, with curl, $publish_rounds alternating rounds"
    printf '%s\n' "${pub_times[@]}" | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
d = [float(r[3]) for r in rows if r[0] == "d"]; b = [float(r[3]) for r in rows if r[0] == "b"]
codes = sorted({r[2] for r in rows})
print("   HTTP status: " + ",".join(codes))
print("   direct: " + " ".join(f"{t:.2f}" for t in d) + f" s (median {statistics.median(d):.2f});  through the broker: "
      + " ".join(f"{t:.2f}" for t in b) + f" s (median {statistics.median(b):.2f});  {statistics.median(b)/statistics.median(d):.2f}x direct")
ud = [float(r[4]) for r in rows if r[0] == "d"]; ub = [float(r[4]) for r in rows if r[0] == "b"]
print(f"   of which the upload (until Verdaccio had read the whole body): direct {statistics.median(ud):.2f} s, through the broker {statistics.median(ub):.2f} s")'
    echo "   CPU seconds per publish: broker $(python3 -c "print(f'{$cpu_b/$hz/$publish_rounds:.2f}')"); Verdaccio $(python3 -c "print(f'{$cpu_v_d/$hz/$publish_rounds:.2f}')") direct, $(python3 -c "print(f'{$cpu_v_b/$hz/$publish_rounds:.2f}')") through the broker"
    echo "   broker RSS: $((idle_kb / 1024)) MB before; peak $((after_kb / 1024)) MB after (was $((before_kb / 1024)) MB): grew by $(( (after_kb - before_kb) / 1024 )) MB"
  } >> "$report"
  rm -f "$work"/body-*.json
  if [ "${PROFILE:-}" = publish ]; then
    sleep 1
    perf report -i "$work/perf.data" --stdio --no-children --percent-limit 0.8 --sort dso,symbol -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | cut -c1-150 | head -40
  fi
fi

# --- 4. idle keep-alive connections ---------------------------------------------------------
if part idle; then
  start_broker idle "https://127.0.0.1:$origin_port/" "$work/npm-token" "max_connections = 20000"
  idle_pid=$broker_pid
  start_rss=$(rss_kb "$idle_pid")
  python3 - "$broker_port" "$ca" "$idle_conns" "$idle_pid" > "$work/idle.json" <<'PY'
import asyncio, json, ssl, sys, time
port, ca, n, pid = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
conns, sem = [], asyncio.Semaphore(100)
async def one():
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
        w.write(b"GET /-/ping HTTP/1.1\r\nhost: x\r\n\r\n")
        await w.drain()
        await r.readuntil(b"\r\n\r\n")
        conns.append((r, w))
def rss_kb():
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))
async def main():
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    opened = time.monotonic() - t0
    # RSS 1 s after the last connection opened, and again once every connection has idled for
    # longer than the broker's park interval (2 s at most).
    await asyncio.sleep(1)
    busy = rss_kb()
    await asyncio.sleep(3)
    print(json.dumps({"connections": len(conns), "open_s": round(opened, 1), "rss_1s_kb": busy, "rss_kb": rss_kb()}))
asyncio.run(main())
PY
  res=$(cat "$work/idle.json")
  {
    echo
    echo "4. $(json "$res" connections) idle keep-alive TLS connections (each made one request; opened in $(json "$res" open_s) s): broker RSS $(( $(json "$res" rss_kb) / 1024 )) MB after 4 s idle, $(( $(json "$res" rss_1s_kb) / 1024 )) MB after 1 s (idle before: $((start_rss / 1024)) MB)"
  } >> "$report"
fi

echo
cat "$report"
