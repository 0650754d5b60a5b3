# Shared by the load benchmarks (run.sh, proxy.sh): sourced after `work`, `repo`, `ca` and
# `pids` exist. Everything listens on 127.0.0.1.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}
json() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
rand_hex() { head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# start_issuer: the loopback OIDC issuer of tests/node (GitHub's shape) over TLS; sets issuer_url
# and request_token. `id_token` then prints a fresh ID token with its default claims.
start_issuer() {
  mkfifo "$work/issuer.out"
  node "$repo/tests/node/oidc-issuer.mjs" --cert "$work/certs/server.pem" --key "$work/certs/server-key.pem" --dir "$work/issuer" > "$work/issuer.out" &
  pids+=($!)
  read -r issuer_line < "$work/issuer.out"
  issuer_url=$(json "$issuer_line" url)
  request_token=$(json "$issuer_line" request_token)
}
id_token() { curl -s --cacert "$ca" -H "Authorization: Bearer $request_token" "$issuer_url/token?audience=npm%3A127.0.0.1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])'; }

# start_verdaccio [MAX_BODY]: Verdaccio 6 from tests/node over TLS (the dev certificate), no
# public URL; sets vport, vpid and vtoken (a publisher's token).
start_verdaccio() {
  vport=$(free_port)
  mkdir -p "$work/verdaccio/storage"
  echo "{\"list\":[],\"secret\":\"$(rand_hex)\"}" > "$work/verdaccio/storage/.verdaccio-db.json"
  sed -e "s|{{STORAGE}}|$work/verdaccio/storage|; s|{{HTPASSWD}}|$work/verdaccio/htpasswd|; s|{{LISTEN}}|https://127.0.0.1:$vport|" \
      -e "s|{{CERT}}|$work/certs/server.pem|; s|{{KEY}}|$work/certs/server-key.pem|; s|{{SECRET}}|$(rand_hex)|" \
      -e "s|^max_body_size: .*|max_body_size: ${1:-200mb}|" "$repo/tests/node/verdaccio.yaml.template" > "$work/verdaccio/config.yaml"
  env -u VERDACCIO_PUBLIC_URL "$repo/tests/node/node_modules/.bin/verdaccio" --config "$work/verdaccio/config.yaml" > "$work/logs/verdaccio.log" 2>&1 &
  vpid=$!
  pids+=($vpid)
  wait_port "$vport"
  for _ in $(seq 1 100); do curl -sf --cacert "$ca" "https://127.0.0.1:$vport/-/ping" >/dev/null && break; sleep 0.1; done
  vtoken=$(curl -s --cacert "$ca" -X PUT -u bench:benchpw -H 'content-type: application/json' \
    -d '{"_id":"org.couchdb.user:bench","name":"bench","password":"benchpw","type":"user","roles":[],"date":"2026-01-01T00:00:00Z"}' \
    "https://127.0.0.1:$vport/-/user/org.couchdb.user:bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
}

# broker_config NAME UPSTREAM_URL CREDENTIAL_FILE [SERVER_LINES] [MORE_TABLES]: a policy granting
# `publish` of pb-* and @bench/* to the loopback issuer's default claims, and the config, in
# $work/NAME; sets broker_port. Needs `issuer_url`.
broker_config() {
  local name=$1 upstream=$2 secret=$3 server=${4:-} tables=${5:-}
  broker_port=$(free_port)
  mkdir -p "$work/$name/policies"
  cat > "$work/$name/policies/bench.toml" <<EOT
[[grant]]
name = "bench"
issuer = "ci"
packages = ["pb-*", "@bench/*"]
actions = ["publish"]
create = true
credential = "upstream"
ttl = "1h"
[grant.claims]
repository_id = "123456789"
EOT
  cat > "$work/$name/phantom.toml" <<EOT
[server]
listen = "127.0.0.1:$broker_port"
public_url = "https://127.0.0.1:$broker_port/"
tls_cert = "$work/certs/server.pem"
tls_key = "$work/certs/server-key.pem"
max_ttl = "1h"
$server

[upstream.main]
url = "$upstream"
scopes = ["*"]
ca_file = "$ca"

[issuer.ci]
issuer = "$issuer_url"
algorithms = ["RS256", "ES256"]
ca_file = "$ca"

[credential.upstream]
upstream = "main"
source = { file = "$secret" }

[audit]
path = "$work/$name/audit.jsonl"

$tables
EOT
}
