#!/usr/bin/env bash
# Runs every test of quorumca on a fresh machine: installs what the tests
# call (openssl) when it is missing, then runs the Go tests. The README's test
# command, and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# -count=1: never answer from the test cache; a CA's tests must run.
exec go test -count=1 -timeout 20m "$@" ./...
