#!/usr/bin/env bash
# The container image, built and run for real with podman (runc), with no image registry: the
# base images the Dockerfile's FROM lines name are made here, from Debian's own archive
# (debootstrap, the mirror of this machine's apt sources) and, for the build stage, this
# machine's Rust toolchain. Then:
#   - the image builds (`podman build --pull=never`);
#   - the broker in it runs as a non-root user;
#   - it serves a read through to a Verdaccio on the host, and refuses a write without a phantom;
#   - `podman stop` ends it cleanly (exit 0, well within the stop timeout).
# If podman cannot run on this machine, the test says so and why, loudly, and fails unless
# PHANTOM_CONTAINER_TEST=optional.
#
#   bash tests/container/test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
base=docker.io/library/debian:bookworm-slim
rust=docker.io/library/rust:1-bookworm
image=localhost/phantom-broker:test
name=phantom-container-test-$$

say() { printf '[container] %s\n' "$*" >&2; }
cannot() {
  say "CONTAINER TEST NOT RUN: $*"
  [ "${PHANTOM_CONTAINER_TEST:-}" = optional ] && exit 0
  exit 1
}

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing podman, runc and debootstrap"
  { apt-get install -y -qq podman runc debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq podman runc debootstrap >/dev/null; }; } \
    || cannot "podman, runc or debootstrap could not be installed"
fi
work=$(mktemp -d)
pids=()
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# crun fails on this machine's cgroups, and raising limits is not permitted: runc, fixed limits.
cat > "$work/containers.conf" <<'EOF'
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
EOF
export CONTAINERS_CONF=$work/containers.conf
podman info >/dev/null 2>"$work/podman-info.err" || cannot "podman info failed: $(tail -3 "$work/podman-info.err")"

mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
[ -n "$mirror" ] || cannot "no Debian mirror in this machine's apt sources"
rootfs() { # DIR [PACKAGES]: a minimal bookworm
  local include=()
  [ -n "${2:-}" ] && include=(--include="$2")
  debootstrap --variant=minbase "${include[@]}" bookworm "$1" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -5 "$work/debootstrap.log" >&2; cannot "debootstrap failed"; }
}
if ! podman image exists "$base"; then
  say "making $base with debootstrap"
  rootfs "$work/base"
  tar -C "$work/base" -c . | podman import -q - "$base" >/dev/null
  rm -rf "$work/base"
fi
if ! podman image exists "$rust"; then
  say "making $rust: debootstrap with a C toolchain, and this machine's Rust toolchain"
  rootfs "$work/rust" gcc,libc6-dev,ca-certificates
  sysroot=$(rustc --print sysroot)
  mkdir -p "$work/rust/usr/local/rust"
  cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/usr/local/rust/"
  tar -C "$work/rust" -c . | podman import -q \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' - "$rust" >/dev/null
  rm -rf "$work/rust"
fi

say "building $image"
start=$SECONDS
# The machine's CA bundle for the HTTPS fetches of the build (egress here is TLS-intercepted).
podman build -q --pull=never --network=host -v /etc/ssl/certs:/etc/ssl/certs:ro -t "$image" . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log" >&2; say "podman build failed"; exit 1; }
say "built in $((SECONDS - start))s: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"

# A Verdaccio on the host, and the broker in the container in front of it (host network: the
# container reaches 127.0.0.1).
# shellcheck source=benches/load/common.sh
. benches/load/common.sh
mkdir -p "$work/logs" "$work/etc/policies" "$work/etc/certs" "$work/secrets"
target/release/phantom certs dev --out "$work/certs" >/dev/null 2>&1 || cargo run --release --quiet -- certs dev --out "$work/certs" >/dev/null
ca=$work/certs/ca.pem
start_verdaccio
bport=$(free_port)
token=$vtoken
printf '%s\n' "$token" > "$work/secrets/npm-token"
# A package in Verdaccio, published directly.
tgz=$(printf 'not really a tarball' | base64); sha=$(printf 'not really a tarball' | sha1sum | cut -d' ' -f1)
published=$(curl -s -w ' %{http_code}' --cacert "$ca" -X PUT -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"_id\":\"pb-box\",\"name\":\"pb-box\",\"dist-tags\":{\"latest\":\"1.0.0\"},\"versions\":{\"1.0.0\":{\"name\":\"pb-box\",\"version\":\"1.0.0\",\"dist\":{\"shasum\":\"$sha\",\"tarball\":\"https://127.0.0.1:$vport/pb-box/-/pb-box-1.0.0.tgz\"}}},\"_attachments\":{\"pb-box-1.0.0.tgz\":{\"content_type\":\"application/octet-stream\",\"data\":\"$tgz\",\"length\":20}}}" \
  "https://127.0.0.1:$vport/pb-box")
[[ "$published" == *" 201" ]] || { say "publishing pb-box to Verdaccio failed: $(tr -d "\n" <<<"$published")"; exit 1; }
cat > "$work/etc/phantom.toml" <<EOF
[server]
listen = "127.0.0.1:$bport"
public_url = "https://127.0.0.1:$bport/"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"

[upstream.verdaccio]
url = "https://127.0.0.1:$vport/"
scopes = ["*"]
ca_file = "certs/ca.pem"

[issuer.github]
issuer = "https://127.0.0.1:1/"
algorithms = ["RS256"]

[credential.verdaccio]
upstream = "verdaccio"
source = { file = "/run/secrets/npm-token" }

[audit]
path = "/var/lib/phantom/audit/phantom.jsonl"

[policy]
dir = "policies"
EOF
chmod -R a+rX "$work/etc" "$work/certs" "$work/secrets"
podman volume rm -f phantom-test-audit >/dev/null 2>&1 || true
podman run -d --init --network=host --name "$name" --read-only --cap-drop=ALL \
  -v "$work/etc:/etc/phantom:ro" -v "$work/certs:/etc/phantom/certs:ro" -v "$work/secrets:/run/secrets:ro" -v phantom-test-audit:/var/lib/phantom/audit \
  "$image" >/dev/null
wait_port "$bport" || { podman logs "$name" >&2; say "the broker in the container did not listen"; exit 1; }

fail() { say "FAILED: $*"; podman logs "$name" 2>&1 | tail -20 >&2; exit 1; }
uid=$(podman exec "$name" id -u)
[ "$uid" != 0 ] || fail "the broker runs as root"
say "the broker runs as uid $uid"
got=$(curl -s --cacert "$ca" "https://127.0.0.1:$bport/pb-box")
tarball=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["versions"]["1.0.0"]["dist"]["tarball"])' <<<"$got" 2>/dev/null || true)
[ "$tarball" = "https://127.0.0.1:$bport/pb-box/-/pb-box-1.0.0.tgz" ] || fail "no packument, rebased onto the broker, through it: $got"
status=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$ca" -X PUT -H 'content-type: application/json' -d '{}' "https://127.0.0.1:$bport/pb-box")
[ "$status" = 401 ] || fail "a write without a phantom got $status"
say "a read went through to Verdaccio on the host; a write without a phantom got 401"
# stderr (the log) is not a terminal in a container: JSON lines, each with its level and target.
podman logs "$name" 2>&1 >/dev/null | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin]
assert lines and all(l["level"] and l["target"] and l["timestamp"] for l in lines), lines' \
  || fail "the container's log is not JSON lines"
grep -q "$token" <(podman logs "$name" 2>&1) && fail "the real token is in the container's log"
start=$(date +%s.%N)
podman stop -t 15 "$name" >/dev/null
took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || fail "the broker exited with $code on podman stop"
python3 -c "import sys; sys.exit(0 if $took < 12 else 1)" || fail "podman stop took ${took}s"
podman run --rm -v phantom-test-audit:/a:ro --entrypoint /usr/local/bin/phantom "$image" audit verify /a/phantom.jsonl >/dev/null \
  || fail "the audit log on the volume does not verify"
podman volume rm -f phantom-test-audit >/dev/null
say "podman stop ended it cleanly in ${took}s (exit 0); the audit log on its volume verifies"
say "container test passed"
