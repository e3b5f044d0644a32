#!/bin/bash
# Starts a 3-member keel or etcd 3.4 cluster on loopback (free ports, fresh
# data dirs), runs keel-load once per load argument string against all three
# client endpoints (or only the leader's with LEADER_ONLY=1), stops it.
# Run from the repo root.
#
# usage: benches/scripts/compare-cluster.sh keel|etcd "member args" "load args"...
set -u
kind=$1; sargs=$2; shift 2
BIN=${KEEL_TARGET:-target/release}
. "$(dirname "$0")/cluster-lib.sh"
start_cluster "$kind" "$sargs"
EPS="${C[0]},${C[1]},${C[2]}"
if [ "${LEADER_ONLY:-0}" = 1 ]; then
  EPS=$(leader_endpoint)
  for i in 0 1 2; do [ "${C[$i]}" = "$EPS" ] && echo "leader: m$i"; done
fi
for la in "$@"; do
  echo "== $kind x3 [$sargs] -> $EPS: $la"
  $BIN/keel-load --endpoints "$EPS" $la | grep -E "Requests/sec|p50|p99 "
done
stop_cluster
