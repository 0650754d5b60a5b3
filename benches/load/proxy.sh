#!/usr/bin/env bash
# Real-workload and forward-proxy benchmarks, in one run, everything on 127.0.0.1:
#
#  1. `npm ci` of a few hundred real packages (Verdaccio's own dependency tree, from
#     tests/node/package-lock.json, published unchanged into a local Verdaccio over TLS), with a
#     lockfile that pins every tarball to the target's URL, a cold npm cache and no scripts:
#     (a) directly from Verdaccio, (b) through the broker's registry face, (c) through the
#     broker's forward proxy (HTTPS_PROXY, the lockfile naming Verdaccio itself), (d) through
#     nginx as a plain TLS reverse proxy. Rounds interleaved; medians.
#  2. Keep-alive GETs of a small packument (its tarball URL naming the upstream, so the registry
#     face rewrites it) with a phantom, through the registry face and through the forward proxy,
#     with the same load client (examples/get_load.rs) against a static nginx origin; medians of
#     the rounds, and the broker's CPU per GET.
#
#   bash benches/load/proxy.sh            # ROUNDS (5) of npm ci, ROUNDS of GET load of SECONDS_PER_RUN (10)
#   bash benches/load/proxy.sh --smoke    # one short pass of each: checks it all still works
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/benches/load
smoke=0
[ "${1:-}" = --smoke ] && smoke=1
rounds=${ROUNDS:-5}
secs=${SECONDS_PER_RUN:-10}
conns=${CONNECTIONS:-50}
if [ $smoke = 1 ]; then rounds=1; secs=1; fi

PATH=$PATH:/usr/sbin
command -v nginx >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null
cargo build --release --quiet --bin phantom --example get_load
phantom=$repo/target/release/phantom
get_load=$repo/target/release/examples/get_load
npm_cli=(node "$repo/tests/node/node_modules/npm/bin/npm-cli.js")
[ -x "$repo/tests/node/node_modules/.bin/verdaccio" ] || (cd "$repo/tests/node" && npm ci --no-audit --no-fund --loglevel=error)

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
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
say() { echo "$*" >&2; }

"$phantom" certs dev --out "$work/certs" >/dev/null
ca=$work/certs/ca.pem
"$phantom" certs dev --out "$work/proxy-ca" >/dev/null   # the forward proxy's own CA
mkdir -p "$work/logs"

# Verdaccio over TLS, reached as `localhost` (npm's proxy agent checks a bare IP's certificate
# against that name), reads open to all.
start_verdaccio
echo "$vtoken" > "$work/verdaccio-token"

seed_start=$SECONDS
seeded=$(NODE_EXTRA_CA_CERTS=$ca NPM_BIN="$repo/tests/node/node_modules/.bin/npm" \
  node "$here/seed.mjs" "$repo/tests/node/package-lock.json" "$work/seed" "https://localhost:$vport/" "$vtoken")
say "seeded Verdaccio with $(json "$seeded" packages) packages ($(( $(json "$seeded" bytes) / 1024 )) KiB of tarballs) in $((SECONDS - seed_start))s"

# The static origin for the GET load: nginx over TLS, serving the packument with its tarball URL
# naming the origin itself (as a registry writes it).
oport=$(free_port)
mkdir -p "$work/www"
sed "s|https://127.0.0.1/|https://localhost:$oport/|g" "$here/packument.json" > "$work/www/pb-bench"
# (d) nginx as a plain reverse proxy in front of Verdaccio.
nport=$(free_port)
cat > "$work/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/logs/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream verdaccio { server 127.0.0.1:$vport; keepalive 64; }
  server {
    listen 127.0.0.1:$oport ssl;
    ssl_certificate $work/certs/server.pem;
    ssl_certificate_key $work/certs/server-key.pem;
    location / { root $work/www; default_type application/json; }
  }
  server {
    listen 127.0.0.1:$nport ssl;
    ssl_certificate $work/certs/server.pem;
    ssl_certificate_key $work/certs/server-key.pem;
    client_max_body_size 200m;
    location / {
      proxy_pass https://verdaccio;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost:$vport;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $ca;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

# The loopback OIDC issuer, for the phantom of the GET load.
start_issuer

# start_broker NAME UPSTREAM_URL CREDENTIAL_FILE: sets broker_pid, broker_port, proxy_port.
start_broker() {
  local name=$1
  proxy_port=$(free_port)
  broker_config "$1" "$2" "$3" "" "[proxy]
listen = \"127.0.0.1:$proxy_port\"
ca_cert = \"$work/proxy-ca/ca.pem\"
ca_key = \"$work/proxy-ca/ca-key.pem\""
  PHANTOM_LOG=warn "$phantom" serve --config "$work/$name/phantom.toml" > "$work/logs/$name.out" 2> "$work/logs/$name.log" &
  broker_pid=$!
  pids+=($broker_pid)
  wait_port "$broker_port"; wait_port "$proxy_port"
}
start_broker ci "https://localhost:$vport/" "$work/verdaccio-token"
ci_port=$broker_port; ci_proxy=$proxy_port
echo "static-$(rand_hex)" > "$work/origin-token"
start_broker get "https://localhost:$oport/" "$work/origin-token"
get_pid=$broker_pid; get_port=$broker_port; get_proxy=$proxy_port
wait_port "$oport"; wait_port "$nport"

say "phantom-broker real-workload and forward-proxy benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $(nginx -v 2>&1), npm $("${npm_cli[@]}" --version)"

# --- 1. npm ci ---------------------------------------------------------------------------------
base_of() {
  case $1 in
    direct|proxy) echo "https://localhost:$vport/" ;;
    broker) echo "https://127.0.0.1:$ci_port/" ;;
    nginx) echo "https://127.0.0.1:$nport/" ;;
  esac
}
npm_ci() { # TARGET -> seconds; fails if the install does
  local target=$1 base dir
  base=$(base_of "$target")
  dir=$work/ci-$target
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$work/seed/project/package.json" "$dir/"
  python3 - "$work/seed/lock.template.json" "$dir/package-lock.json" "$base" <<'PY'
import json, sys
lock = json.load(open(sys.argv[1]))
for key, entry in lock["packages"].items():
    if key:
        name = key.rsplit("node_modules/", 1)[1]
        entry["resolved"] = f"{sys.argv[3]}{name}/-/{name.split('/')[-1]}-{entry['version']}.tgz"
json.dump(lock, open(sys.argv[2], "w"), indent=2)
PY
  { echo "registry=$base"; echo "cafile=$ca"; } > "$dir/npmrc"
  if [ "$target" = proxy ]; then
    { echo "https-proxy=http://127.0.0.1:$ci_proxy"; echo "cafile=$work/proxy-ca/ca.pem"; } >> "$dir/npmrc"
  fi
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && NPM_CONFIG_USERCONFIG="$dir/npmrc" NPM_CONFIG_CACHE="$dir/cache" NPM_CONFIG_UPDATE_NOTIFIER=false \
    "${npm_cli[@]}" ci --ignore-scripts --no-audit --no-fund --loglevel=error >"$dir/out.log" 2>&1) \
    || { echo "npm ci through $target failed:" >&2; tail -20 "$dir/out.log" >&2; exit 1; }
  end=$(date +%s.%N)
  [ -f "$dir/node_modules/verdaccio/package.json" ] || { echo "npm ci through $target installed no verdaccio" >&2; exit 1; }
  python3 -c "print(f'{$end - $start:.2f}')"
}
declare -A ci_times
targets="direct broker proxy nginx"
for round in $(seq 1 "$rounds"); do
  order=$targets; [ $((round % 2)) = 0 ] && order=$(echo "$targets" | tr ' ' '\n' | tac | tr '\n' ' ')
  for t in $order; do ci_times[$t]="${ci_times[$t]:-} $(npm_ci "$t")"; done
done
# The proxy run really went through the tunnel: the broker audited its tarball reads.
proxied=$(grep -c '"via":"proxy"' "$work/ci/audit.jsonl" || true)
[ "$proxied" -ge "$(json "$seeded" packages)" ] || { echo "only $proxied reads went through the proxy" >&2; exit 1; }
say ""
say "npm ci of $(json "$seeded" packages) packages, cold cache, no scripts: median of $rounds (seconds)"
direct_median=$(median ${ci_times[direct]})
for t in $targets; do
  m=$(median ${ci_times[$t]})
  say "$(printf '  %-8s %6s s  (%s x direct)   runs:%s' "$t" "$m" "$(python3 -c "print(f'{$m / $direct_median:.2f}')")" "${ci_times[$t]}")"
done

# --- 2. keep-alive GETs: registry face against forward proxy -----------------------------------
id_token=$(curl -s --cacert "$ca" -H "Authorization: Bearer $request_token" "$issuer_url/token?audience=npm%3A127.0.0.1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')
phantom_token=$(curl -s --cacert "$ca" -X POST -H "Authorization: Bearer $id_token" -H 'content-type: application/json' \
  -d '{"packages":["pb-bench"],"actions":["publish"]}' "https://127.0.0.1:$get_port/-/phantom/v1/exchange" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
# Sanity: the registry face rewrites the tarball URL onto itself; the proxy leaves it naming the origin.
curl -sf --cacert "$ca" -H "Authorization: Bearer $phantom_token" "https://127.0.0.1:$get_port/pb-bench" | grep -q "\"tarball\":\"https://127.0.0.1:$get_port/pb-bench/-/"
curl -sf --proxy "http://127.0.0.1:$get_proxy" --cacert "$work/proxy-ca/ca.pem" -H "Authorization: Bearer $phantom_token" \
  "https://localhost:$oport/pb-bench" | grep -q "\"tarball\":\"https://localhost:$oport/pb-bench/-/"
declare -A rps cpu
for round in $(seq 1 "$rounds"); do
  for face in registry proxy; do
    c0=$(cpu_ticks "$get_pid")
    if [ $face = registry ]; then
      r=$("$get_load" "https://127.0.0.1:$get_port/pb-bench" "$ca" "$secs" "$conns" - "Bearer $phantom_token")
    else
      r=$("$get_load" "https://localhost:$oport/pb-bench" "$work/proxy-ca/ca.pem" "$secs" "$conns" "$get_proxy" "Bearer $phantom_token")
    fi
    c1=$(cpu_ticks "$get_pid")
    [ "$(json "$r" errors)" = 0 ] || { echo "GETs through the $face face failed: $r" >&2; exit 1; }
    rps[$face]="${rps[$face]:-} $(json "$r" per_second)"
    cpu[$face]="${cpu[$face]:-} $(python3 -c "print(f'{($c1 - $c0) / $hz / $(json "$r" requests) * 1e6:.1f}')")"
  done
done
say ""
say "keep-alive GETs with a phantom, $conns connections, same client, median of $rounds x ${secs}s"
for face in registry proxy; do
  say "$(printf '  %-8s %8s req/s   broker CPU %6s us/GET   runs:%s' "$face" "$(median ${rps[$face]})" "$(median ${cpu[$face]})" "${rps[$face]}")"
done
