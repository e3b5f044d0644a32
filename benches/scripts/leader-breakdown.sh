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
. "$(dirname "$0")/cluster-lib.sh"
start_cluster keel ""
LEADER=$(leader_endpoint)
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
stop_cluster
