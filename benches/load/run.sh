#!/usr/bin/env bash
# Load benchmark: keep-alive GETs of a small packument over TLS on both legs, against
#   (a) the origin directly, (b) the broker swapping a phantom per request,
#   (c) nginx injecting a static token, (d) haproxy doing the same,
# interleaved round by round, with the same load tool (wrk) and the same upstream: a static
# nginx TLS origin, so that the upstream is never the bottleneck. Everything runs on
# 127.0.0.1 and is stopped at the end.
#
#   bash benches/load/run.sh            # full run (about 4 minutes)
#   bash benches/load/run.sh --smoke    # one short round: checks that everything still works
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (10), CONNECTIONS (50), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/benches/load

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-10}
conns=${CONNECTIONS:-50}
threads=${THREADS:-2}
if [ $smoke = 1 ]; then rounds=1; secs=2; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
  echo "installing nginx, haproxy and wrk" >&2
  apt-get install -y -qq nginx haproxy wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx haproxy wrk >/dev/null; }
fi
PATH=$PATH:/usr/sbin
cargo build --release --quiet --bin phantom
phantom=$repo/target/release/phantom

work=$(mktemp -d)
chmod 755 "$work"   # nginx workers drop to an unprivileged user
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

"$phantom" certs dev --out "$work/certs" >/dev/null
cat "$work/certs/server.pem" "$work/certs/server-key.pem" > "$work/certs/haproxy.pem"
mkdir -p "$work/www" "$work/logs"
cp "$here/packument.json" "$work/www/pb-bench"
origin_port=$(free_port); broker_port=$(free_port); nginx_port=$(free_port); haproxy_port=$(free_port)
token=static-$RANDOM$RANDOM

# (origin) nginx serving the packument over TLS, two workers.
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
      proxy_ssl_trusted_certificate $work/certs/ca.pem;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
nginx -c "$work/nginx-proxy.conf" -p "$work" & pids+=($!)

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
  server o 127.0.0.1:$origin_port ssl verify required ca-file $work/certs/ca.pem sni str(localhost) verifyhost localhost
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/logs/haproxy.log" 2>&1 & pids+=($!)

# (b) the broker. A phantom needs an ID token: the loopback OIDC issuer from tests/node mints one.
if [ ! -x "$repo/tests/node/node_modules/.bin/npm" ]; then (cd "$repo/tests/node" && npm ci --no-audit --no-fund --loglevel=error); fi
mkfifo "$work/issuer.out"
node "$repo/tests/node/oidc-issuer.mjs" --cert "$work/certs/server.pem" --key "$work/certs/server-key.pem" --dir "$work/issuer" > "$work/issuer.out" & pids+=($!)
read -r issuer_line < "$work/issuer.out"
issuer_url=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["url"])' "$issuer_line")
echo "$token" > "$work/npm-token"
mkdir -p "$work/policies"
cat > "$work/policies/bench.toml" <<EOF
[[grant]]
name = "bench"
issuer = "ci"
packages = ["pb-*"]
actions = ["publish"]
credential = "origin"
ttl = "1h"
[grant.claims]
repository_id = "123456789"
EOF
cat > "$work/phantom.toml" <<EOF
[server]
listen = "127.0.0.1:$broker_port"
public_url = "https://127.0.0.1:$broker_port/"
tls_cert = "$work/certs/server.pem"
tls_key = "$work/certs/server-key.pem"
max_ttl = "1h"

[upstream.origin]
url = "https://127.0.0.1:$origin_port/"
scopes = ["*"]
ca_file = "$work/certs/ca.pem"

[issuer.ci]
issuer = "$issuer_url"
algorithms = ["RS256", "ES256"]
ca_file = "$work/certs/ca.pem"

[credential.origin]
upstream = "origin"
source = { file = "$work/npm-token" }

[audit]
path = "$work/audit/phantom.jsonl"

[policy]
dir = "$work/policies"
EOF
PHANTOM_LOG=warn "$phantom" serve --config "$work/phantom.toml" > "$work/logs/broker.out" 2> "$work/logs/broker.log" & pids+=($!)
broker_pid=$!
for p in $origin_port $nginx_port $haproxy_port $broker_port; do wait_port "$p"; done

id_token=$(curl -s --cacert "$work/certs/ca.pem" -H "Authorization: Bearer $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["request_token"])' "$issuer_line")" \
  "$issuer_url/token?audience=npm%3A127.0.0.1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')
phantom_token=$(curl -s --cacert "$work/certs/ca.pem" -X POST -H "Authorization: Bearer $id_token" -H 'content-type: application/json' \
  -d '{"packages":["pb-bench"],"actions":["publish"]}' "https://127.0.0.1:$broker_port/-/phantom/v1/exchange" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# Sanity: each target serves the packument; the broker's answer carries no credential.
for url in "https://127.0.0.1:$origin_port/pb-bench" "https://127.0.0.1:$nginx_port/pb-bench" "https://127.0.0.1:$haproxy_port/pb-bench"; do
  curl -sf --cacert "$work/certs/ca.pem" "$url" | grep -q '"pb-bench"'
done
curl -sf --cacert "$work/certs/ca.pem" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$broker_port/pb-bench" | grep -q '"pb-bench"'

pids_of() { # the processes whose CPU and memory count for a target
  case $1 in
    direct) echo "$(cat "$work/origin.pid") $(pgrep -P "$(cat "$work/origin.pid")" | tr '\n' ' ')" ;;
    broker) echo "$broker_pid" ;;
    nginx) echo "$(cat "$work/nginx-proxy.pid") $(pgrep -P "$(cat "$work/nginx-proxy.pid")" | tr '\n' ' ')" ;;
    haproxy) pgrep -f "haproxy -f $work/haproxy.cfg" | tr '\n' ' ' ;;
  esac
}
cpu_ticks() { local t=0; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
peak_rss_kb() { local t=0; for p in $1; do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $t; }
url_of() {
  case $1 in
    direct) echo "https://127.0.0.1:$origin_port/pb-bench" ;;
    broker) echo "https://127.0.0.1:$broker_port/pb-bench" ;;
    nginx) echo "https://127.0.0.1:$nginx_port/pb-bench" ;;
    haproxy) echo "https://127.0.0.1:$haproxy_port/pb-bench" ;;
  esac
}

# SYSCALLS=1: count the broker's system calls per request under load (strace; slows it down).
if [ -n "${SYSCALLS:-}" ]; then
  timeout 6 strace -c -f -p "$broker_pid" -o "$work/strace.txt" &
  strace_pid=$!
  sleep 0.5
  n=$(wrk -t"$threads" -c"$conns" -d4s -s "$here/report.lua" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$broker_port/pb-bench" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
  wait $strace_pid || true
  echo "requests: $n"
  awk -v n="$n" 'NR>2 && $NF!="total" && $4+0>0 {printf "%-16s %8.2f per request\n", $NF, $4/n}' "$work/strace.txt" | sort -k2 -nr | head -12
  exit 0
fi

# PROFILE=1: sample the broker under load with perf (cpu-clock) and print where its time goes.
if [ -n "${PROFILE:-}" ]; then
  perf record -e cpu-clock -F 1999 -g -o "$work/perf.data" -p "$broker_pid" -- sleep "$secs" >/dev/null 2>&1 &
  perf_pid=$!
  wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$here/report.lua" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$broker_port/pb-bench" | tail -1
  wait $perf_pid || true
  [ -n "${PERF_OUT:-}" ] && cp "$work/perf.data" "$PERF_OUT"
  echo "== by binary"
  perf report -i "$work/perf.data" --stdio --no-children --sort dso -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | head -12
  echo "== by symbol"
  perf report -i "$work/perf.data" --stdio --no-children --percent-limit 0.6 --sort dso,symbol -g none 2>/dev/null | grep '%' | sed 's/  */ /g' | cut -c1-150 | head -60
  exit 0
fi

results=$work/results.jsonl
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$broker_pid/status")
hz=$(getconf CLK_TCK)
for round in $(seq 1 "$rounds"); do
  for target in direct broker nginx haproxy; do
    procs=$(pids_of $target)
    before=$(cpu_ticks "$procs")
    header=()
    [ $target = broker ] && header=(-H "Authorization: Bearer $phantom_token")
    line=$(wrk -t"$threads" -c"$conns" -d"${secs}s" -s "$here/report.lua" "${header[@]}" "$(url_of $target)" | tail -1)
    after=$(cpu_ticks "$procs")
    python3 - "$line" "$target" "$round" "$((after - before))" "$hz" "$(peak_rss_kb "$procs")" >> "$results" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update(target=sys.argv[2], round=int(sys.argv[3]))
r["cpu_s_per_10k"] = int(sys.argv[4]) / int(sys.argv[5]) / max(r["requests"], 1) * 10000
r["peak_rss_mb"] = int(sys.argv[6]) / 1024
print(json.dumps(r))
PY
    echo "round $round $target: $(tail -1 "$results")" >&2
  done
done

python3 - "$results" "$idle_rss" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda t, k: statistics.median(r[k] for r in rows if r["target"] == t)
print(f"\nkeep-alive GET of a 989-byte packument, TLS on both legs; medians of {max(r['round'] for r in rows)} interleaved rounds")
print(f"{'target':8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'CPU s/10k':>9} {'peak RSS MB':>11} {'errors':>6}")
for t in ["direct", "broker", "nginx", "haproxy"]:
    print(f"{t:8} {med(t,'rps'):9.0f} {med(t,'p50')/1000:7.2f} {med(t,'p99')/1000:7.2f} {med(t,'p999')/1000:8.2f} "
          f"{med(t,'cpu_s_per_10k'):9.3f} {max(r['peak_rss_mb'] for r in rows if r['target']==t):11.1f} {sum(r['errors'] for r in rows if r['target']==t):6d}")
print(f"\nbroker/nginx throughput: {med('broker','rps')/med('nginx','rps'):.2f}x   broker/haproxy: {med('broker','rps')/med('haproxy','rps'):.2f}x")
print(f"broker idle RSS before load: {int(sys.argv[2])/1024:.1f} MB")
PY
