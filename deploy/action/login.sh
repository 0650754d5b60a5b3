#!/usr/bin/env bash
# The step of the composite action (action.yml at the repository's root): gets `phantom` (on the
# PATH, $PHANTOM_BIN, or built from the action's own checkout with cargo), then runs
# `phantom login` with the job's ID token, which phantom fetches from GitHub's token endpoint
# (ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN, present when the job has `id-token: write`).
set -euo pipefail
umask 077   # the .npmrc and its temporary copy hold the phantom
: "${PHANTOM_BROKER:?the action needs its broker input}" "${PHANTOM_PACKAGES:?the action needs its packages input}" \
  "${PHANTOM_ACTIONS:?the action needs its actions input}"
if [ -z "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] || [ -z "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
  echo "::error::phantom login needs the job's OIDC ID token: give the job 'permissions: id-token: write'" >&2
  exit 1
fi
phantom=${PHANTOM_BIN:-}
if [ -z "$phantom" ]; then
  if command -v phantom >/dev/null 2>&1; then
    phantom=$(command -v phantom)
  else
    here=$(cd "$(dirname "$0")/../.." && pwd)
    echo "building phantom from $here (cargo install --locked)" >&2
    cargo install --locked --quiet --path "$here" --bin phantom --root "${RUNNER_TEMP:-/tmp}/phantom"
    phantom=${RUNNER_TEMP:-/tmp}/phantom/bin/phantom
  fi
fi
args=(login --broker "$PHANTOM_BROKER" --packages "$PHANTOM_PACKAGES" --actions "$PHANTOM_ACTIONS")
[ -n "${PHANTOM_TTL_SECONDS:-}" ] && args+=(--ttl-seconds "$PHANTOM_TTL_SECONDS")
[ -n "${PHANTOM_NPMRC:-}" ] && args+=(--npmrc "$PHANTOM_NPMRC")
[ -n "${PHANTOM_CA_FILE:-}" ] && args+=(--ca-file "$PHANTOM_CA_FILE")
"$phantom" "${args[@]}"
if [ "${PHANTOM_SET_REGISTRY:-true}" = true ]; then
  npmrc=${PHANTOM_NPMRC:-${NPM_CONFIG_USERCONFIG:-$HOME/.npmrc}}
  grep -v '^registry=' "$npmrc" > "$npmrc.tmp" || true
  { echo "registry=$PHANTOM_BROKER"; cat "$npmrc.tmp"; } > "$npmrc"
  rm -f "$npmrc.tmp"
  [ -n "${PHANTOM_CA_FILE:-}" ] && ! grep -q '^cafile=' "$npmrc" && echo "cafile=$PHANTOM_CA_FILE" >> "$npmrc"
fi
echo "the job's .npmrc holds a phantom for $PHANTOM_PACKAGES ($PHANTOM_ACTIONS)"
