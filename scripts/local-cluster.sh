#!/usr/bin/env bash
# Brings up a local quorumca cluster on 127.0.0.1: 3 managers and 2 workers,
# each a `quorumca` process with its own data directory under .cluster/.
# Prints the cluster's status and where each node's certificates are.
#
#   scripts/local-cluster.sh          start (stops a running one first)
#   scripts/local-cluster.sh stop     stop it and keep the data
#   scripts/local-cluster.sh clean    stop it and remove .cluster/
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
dir=$top/.cluster
bin=$dir/bin/quorumca
# The nodes listen on 127.0.0.1, ports BASE+1..BASE+5 (API), BASE+11..15
# (Raft) and BASE+21..25 (gossip, TCP and UDP); BASE is $QUORUMCA_BASE_PORT,
# default 23770. When one is taken, the script says which and stops.
base_port=${QUORUMCA_BASE_PORT:-23770}
case $base_port in
  ''|*[!0-9]*) echo "QUORUMCA_BASE_PORT=$base_port: give a number, e.g. 24770" >&2; exit 2 ;;
esac
if [ "$base_port" -lt 1024 ] || [ "$base_port" -gt 65500 ]; then
  echo "QUORUMCA_BASE_PORT=$base_port: give a number from 1024 to 65500 (the nodes use BASE+1 to BASE+25)" >&2; exit 2
fi

# check_ports: every port the cluster will use is free, or say which is
# taken and what to do.
check_ports() {
  local taken=()
  for off in 1 2 3 4 5 11 12 13 14 15 21 22 23 24 25; do
    local p=$((base_port + off))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then taken+=("$p"); fi
  done
  if [ ${#taken[@]} -gt 0 ]; then
    echo "port(s) ${taken[*]} on 127.0.0.1 are taken by another program (another local cluster, or a quorumca on its default ports?)." >&2
    echo "Stop it, or choose other ports: QUORUMCA_BASE_PORT=$((base_port + 1000)) $0 (it uses BASE+1 to BASE+25)." >&2
    exit 1
  fi
}

stop() {
  if [ -d "$dir" ]; then
    for pidfile in "$dir"/*/pid; do
      [ -f "$pidfile" ] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    done
  fi
}

# wait_socket NODE: wait (bounded) until the node's control socket answers.
wait_socket() {
  local n=$1
  for _ in $(seq 150); do
    if "$bin" status --data-dir "$dir/$n" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$dir/$n/pid")" 2>/dev/null; then
      echo "$n exited; its log:" >&2; cat "$dir/$n/log" >&2
      if grep -q "address already in use" "$dir/$n/log"; then
        echo "A port $n needs is taken: choose other ports with QUORUMCA_BASE_PORT=$((base_port + 1000)) $0 (it uses BASE+1 to BASE+25)." >&2
      fi
      exit 1
    fi
    sleep 0.2
  done
  echo "$n did not come up in 30s; its log:" >&2; cat "$dir/$n/log" >&2; exit 1
}

# start NODE ARGS...: run quorumca ARGS in the background for NODE.
start() {
  local n=$1; shift
  mkdir -p "$dir/$n"
  chmod 700 "$dir/$n"
  "$bin" "$@" --data-dir "$dir/$n" >"$dir/$n/log" 2>&1 &
  echo $! >"$dir/$n/pid"
  wait_socket "$n"
}

case "${1:-start}" in
  stop) stop; echo "stopped; data kept in $dir"; exit 0 ;;
  clean) stop; rm -rf "$dir"; echo "removed $dir"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|clean]" >&2; exit 2 ;;
esac

stop
check_ports
rm -rf "$dir"
mkdir -p "$dir/bin"
echo "building quorumca..."
CGO_ENABLED=0 go build -o "$bin" ./cmd/quorumca

api() { echo "127.0.0.1:$((base_port + $1))"; }
raft() { echo "127.0.0.1:$((base_port + 10 + $1))"; }
gossip() { echo "127.0.0.1:$((base_port + 20 + $1))"; }

start manager1 init --listen-addr "$(api 1)" --raft-addr "$(raft 1)" --gossip-addr "$(gossip 1)"
# The tokens go through files only this user reads: never on a command
# line, where every local user sees them in ps.
(umask 077; "$bin" join-token -q manager --data-dir "$dir/manager1" >"$dir/manager.token")
(umask 077; "$bin" join-token -q worker --data-dir "$dir/manager1" >"$dir/worker.token")
start manager2 join --token-file "$dir/manager.token" --listen-addr "$(api 2)" --raft-addr "$(raft 2)" --gossip-addr "$(gossip 2)" "$(api 1)"
start manager3 join --token-file "$dir/manager.token" --listen-addr "$(api 3)" --raft-addr "$(raft 3)" --gossip-addr "$(gossip 3)" "$(api 1)"
# Workers join through a follower: any manager admits a node.
start worker1 join --token-file "$dir/worker.token" --listen-addr "$(api 4)" --raft-addr "$(raft 4)" --gossip-addr "$(gossip 4)" "$(api 2)"
start worker2 join --token-file "$dir/worker.token" --listen-addr "$(api 5)" --raft-addr "$(raft 5)" --gossip-addr "$(gossip 5)" "$(api 3)"

echo
"$bin" status --data-dir "$dir/manager1"
echo
echo "Certificates (node.crt, node.key, root-ca.crt):"
for n in manager1 manager2 manager3 worker1 worker2; do
  subject=$(openssl x509 -noout -subject -in "$dir/$n/certificates/node.crt" 2>/dev/null || echo "?")
  echo "  $n: $dir/$n/certificates/  ($subject)"
done
echo
echo "Logs: $dir/*/log. Admin: $bin status --data-dir $dir/manager2"
echo "Stop: $0 stop"
