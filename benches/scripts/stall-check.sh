#!/bin/bash
# Does heavy read and maintenance work stall the raft core? Starts a
# 3-member keel or etcd 3.4 cluster (cluster-lib.sh), writes KEYS keys, then,
# while one writer load runs on the leader, compacts at the current revision,
# reads every key in one range, and runs 200 serializable readers on the
# leader. Reports the writes' latency, the range's time, and the leader
# changes every member saw (etcd_server_leader_changes_seen_total) during it.
# Run from the repo root after `cargo build --release --workspace`.
#
# usage: benches/scripts/stall-check.sh keel|etcd ["member args"]
set -u
kind=$1; sargs=${2:-}
KEYS=${KEYS:-2000000}
BIN=${KEEL_TARGET:-target/release}
. "$(dirname "$0")/cluster-lib.sh"
export ETCDCTL_API=3
start_cluster "$kind" "$sargs"
EPS="${C[0]},${C[1]},${C[2]}"
L=$(leader_endpoint)
changes() {
  local i total=0 n
  for i in 0 1 2; do
    n=$(curl -s "${C[$i]}/metrics" | awk '/^etcd_server_leader_changes_seen_total/ {print $2}')
    total=$((total + ${n:-0}))
  done
  echo $total
}
echo "== $kind x3 [$sargs]: writing $KEYS keys (16 B keys, 16 B values) through all members"
$BIN/keel-load --endpoints "$EPS" --conns 20 --clients 200 --total $((KEYS + KEYS / 4)) \
  --key-size 16 --val-size 16 put --key-space-size "$KEYS" --sequential-keys | grep -E "Requests/sec"
rev=$(etcdctl --endpoints="$L" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
before=$(changes)
echo "== at revision $rev, leader $L, leader changes so far: $before"
# The writer whose latency is watched: 16 clients on the leader.
$BIN/keel-load --endpoints "$L" --conns 4 --clients 16 --total 150000 --key-size 16 --val-size 16 \
  put --key-space-size "$KEYS" > "$D/writes.txt" &
writer=$!
sleep 3
# 200 serializable readers on the leader.
$BIN/keel-load --endpoints "$L" --conns 20 --clients 200 --total 400000 --key-size 16 \
  range 0000000000000001 --consistency s > "$D/reads.txt" &
readers=$!
sleep 2
t0=$(date +%s.%N)
etcdctl --endpoints="$L" compact "$rev" > /dev/null
t1=$(date +%s.%N)
n=$(etcdctl --endpoints="$L" --command-timeout=120s get "" --from-key --keys-only | grep -c .)
t2=$(date +%s.%N)
echo "compact: $(echo "$t1 - $t0" | bc) s; range over every key: $n keys in $(echo "$t2 - $t1" | bc) s"
wait $readers
wait $writer
echo "writes during it:"; grep -E "Requests/sec|p50|p99 " "$D/writes.txt"
echo "serializable reads during it:"; grep -E "Requests/sec|p50|p99 " "$D/reads.txt"
echo "leader changes during it: $(( $(changes) - before ))"
stop_cluster
