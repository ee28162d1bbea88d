#!/usr/bin/env bash
# The docker compose cluster (docker-compose.yml): 3 managers, 3 workers.
#
#   scripts/compose.sh build   build the static binary (CGO_ENABLED=0) and
#                              the FROM-scratch image quorumca:local
#   scripts/compose.sh up      build, then docker-compose up -d, and wait
#                              until all six containers are healthy
#   scripts/compose.sh down    stop and remove the containers and network
#                              (volumes kept)
#   scripts/compose.sh clean   down, and remove the volumes too
set -euo pipefail
cd "$(dirname "$0")/.."
image=${QUORUMCA_IMAGE:-quorumca:local}
export QUORUMCA_IMAGE=$image

build() {
  mkdir -p bin
  CGO_ENABLED=0 go build -trimpath -o bin/quorumca-static ./cmd/quorumca
  docker build -q -t "$image" . >/dev/null
  echo "built $image"
}

wait_healthy() {
  local deadline=$((SECONDS + ${QUORUMCA_COMPOSE_TIMEOUT:-120}))
  while :; do
    local ids states
    ids=$(docker-compose ps -q)
    states=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' $ids)
    if [ "$(echo "$states" | grep -c ' healthy$')" = 6 ]; then
      echo "$states"
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "not healthy in time:" >&2; echo "$states" >&2
      docker-compose logs --tail 20 >&2
      return 1
    fi
    sleep 1
  done
}

case "${1:-up}" in
  build) build ;;
  up) build; docker-compose up -d; wait_healthy
      docker-compose exec -T manager1 /quorumca node ls --data-dir /data ;;
  down) docker-compose down --remove-orphans ;;
  clean) docker-compose down --remove-orphans --volumes ;;
  *) echo "usage: $0 [build|up|down|clean]" >&2; exit 2 ;;
esac
