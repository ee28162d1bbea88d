#!/usr/bin/env bash
# Runs every test of quorumca on a fresh machine: installs what the tests
# call (openssl, nginx, and CloudFlare's cfssl for the external CA tests) when it is
# missing, then runs the Go tests. The README's test command, and what .ci/run
# calls.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# nginx: the integration tests run Debian's nginx in front of a node's files.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${need_apt[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# cfssl v1.7.1 needs Go 1.27 to build: the go command fetches that toolchain
# from the module proxy for this one install; quorumca itself stays on 1.26.
gobin="$(go env GOPATH)/bin"
export PATH="$PATH:$gobin"
if ! command -v cfssl >/dev/null 2>&1; then
  echo "scripts/test.sh: installing cfssl v1.7.1 into $gobin" >&2
  GOTOOLCHAIN=go1.27.3 go install github.com/cloudflare/cfssl/cmd/cfssl@v1.7.1
fi

# -count=1: never answer from the test cache; a CA's tests must run.
# -race: every package runs under the race detector (the whole suite takes
# about 6 minutes so on 2 cores). The one test that cannot is the upgrade
# from raft-boltdb v1: boltdb/bolt v1.3.1, which wrote the release before's
# files, trips the detector's pointer checks in its own code; it runs
# without -race after.
go test -race -count=1 -timeout 25m "$@" ./...
go test -count=1 -timeout 5m -run '^TestOpensV1Store$' "$@" ./raft/

# The chaos suite needs a Docker engine: it runs a compose cluster per
# scenario. Where `docker info` does not answer, say so plainly.
if docker info >/dev/null 2>&1; then
  echo "== chaos suite (integration/chaos: docker compose, 3 managers + 3 workers per scenario)"
  QUORUMCA_CHAOS=1 go test -count=1 -timeout 30m -v ./integration/chaos/ 2>&1 \
    | tee "${TMPDIR:-/tmp}/quorumca-chaos.log" | grep -E '^(--- |ok |FAIL|PASS)|SUMMARY' || true
  if ! grep -q '^ok ' "${TMPDIR:-/tmp}/quorumca-chaos.log"; then
    echo "chaos suite FAILED; full log: ${TMPDIR:-/tmp}/quorumca-chaos.log" >&2
    tail -100 "${TMPDIR:-/tmp}/quorumca-chaos.log" >&2
    exit 1
  fi
else
  echo "== chaos suite SKIPPED: docker info does not answer (no Docker engine here)"
fi
