# Shortcuts for the commands the README gives.

.PHONY: test cluster bench bench-join bench-renew bench-rotate bench-scale

# Every test: unit, integration, and the docker chaos suite when docker answers.
test:
	./scripts/test.sh

# A local 3-manager, 2-worker cluster on 127.0.0.1.
cluster:
	./scripts/local-cluster.sh

# join and renew at the issue's sizes (2,000 nodes, 64 at a time) and a
# rotation with 200 agents: about a minute and a half on 2 cores (500
# agents, the rotate default, do not settle on 2 cores; see the README).
# BENCHFLAGS adds flags (--json, --cpuprofile FILE).
bench:
	go run ./cmd/quorumca-bench $(BENCHFLAGS) all --agents 200

bench-join:
	go run ./cmd/quorumca-bench $(BENCHFLAGS) join

bench-renew:
	go run ./cmd/quorumca-bench $(BENCHFLAGS) renew

bench-rotate:
	go run ./cmd/quorumca-bench $(BENCHFLAGS) rotate

# 10,000 simulated nodes on 3 managers (real joins, one mutual-TLS
# connection each, heartbeats, a rotation's renewal storm): idle CPU per
# node, join and renewal storms, node ls. A few minutes on 2 cores.
bench-scale:
	go run ./cmd/quorumca-bench $(BENCHFLAGS) scale --nodes 10000
