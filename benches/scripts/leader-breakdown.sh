#!/bin/bash
# Starts a 3-member keel cluster on loopback (free ports, fresh data dirs),
# sends 1-client puts to the leader, then prints the leader's own means of
# WAL fsync and AppendEntries round trip (its /metrics sum / count), and
# stops the cluster. Run from the repo root; KEEL_TARGET picks the build.
#
# usage: benches/scripts/leader-breakdown.sh ["load args"]
set -u
BIN=${KEEL_TARGET:-target/release}
LOAD=${1:-"--total 3000 --val-size 256 put"}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
D=$(mktemp -d "${TMPDIR:-/tmp}/keel-breakdown.XXXX")
C=() P=() PIDS=()
for i in 0 1 2; do C+=("http://127.0.0.1:$(free_port)"); P+=("http://127.0.0.1:$(free_port)"); done
INITIAL="m0=${P[0]},m1=${P[1]},m2=${P[2]}"
for i in 0 1 2; do
  $BIN/keel --name "m$i" --data-dir "$D/m$i" --listen-client-urls "${C[$i]}" \
    --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
    --initial-cluster "$INITIAL" > "$D/m$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 300); do curl -sf --max-time 5 "${C[$i]}/health" >/dev/null && break; sleep 0.1; done
done
LEADER=$(ETCDCTL_API=3 etcdctl --endpoints="${C[0]},${C[1]},${C[2]}" endpoint status -w json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print([s["Endpoint"] for s in d if s["Status"]["leader"] == s["Status"]["header"]["member_id"]][0])')
$BIN/keel-load --endpoints "$LEADER" $LOAD | grep -E "Requests/sec|p50|p99 "
curl -s --max-time 5 "$LEADER/metrics" | python3 -c '
import re, sys
seen = {}
for line in sys.stdin:
    m = re.match(r"(etcd_disk_wal_fsync_duration_seconds|etcd_network_peer_round_trip_time_seconds)_(sum|count)(\{[^}]*\})? (\S+)", line)
    if m:
        seen[(m.group(1), m.group(3) or "", m.group(2))] = float(m.group(4))
for (name, labels, kind), value in sorted(seen.items()):
    if kind == "sum" and seen[(name, labels, "count")]:
        count = seen[(name, labels, "count")]
        print(f"  {name}{labels}: mean {value / count * 1e6:.0f} us over {count:.0f}")'
for p in "${PIDS[@]}"; do kill -9 "$p"; wait "$p" 2>/dev/null; done
rm -rf "$D"
