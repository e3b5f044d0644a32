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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
D=$(mktemp -d "${TMPDIR:-/tmp}/keel-cluster-bench.XXXX")
C=() P=() PIDS=()
for i in 0 1 2; do C+=("http://127.0.0.1:$(free_port)"); P+=("http://127.0.0.1:$(free_port)"); done
INITIAL="m0=${P[0]},m1=${P[1]},m2=${P[2]}"
for i in 0 1 2; do
  if [ "$kind" = keel ]; then
    $BIN/keel --name "m$i" --data-dir "$D/m$i" --listen-client-urls "${C[$i]}" \
      --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
      --initial-cluster "$INITIAL" $sargs > "$D/m$i.log" 2>&1 &
  else
    etcd --name "m$i" --data-dir "$D/m$i" --listen-client-urls "${C[$i]}" --advertise-client-urls "${C[$i]}" \
      --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
      --initial-cluster "$INITIAL" $sargs > "$D/m$i.log" 2>&1 &
  fi
  PIDS+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 300); do curl -sf --max-time 5 "${C[$i]}/health" >/dev/null && break; sleep 0.1; done
done
EPS="${C[0]},${C[1]},${C[2]}"
if [ "${LEADER_ONLY:-0}" = 1 ]; then
  EPS=$(ETCDCTL_API=3 etcdctl --endpoints="${C[0]},${C[1]},${C[2]}" endpoint status -w json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print([s["Endpoint"] for s in d if s["Status"]["leader"] == s["Status"]["header"]["member_id"]][0])')
fi
for la in "$@"; do
  echo "== $kind x3 [$sargs] -> $EPS: $la"
  $BIN/keel-load --endpoints "$EPS" $la | grep -E "Requests/sec|p50|p99 "
done
for p in "${PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null; done
rm -rf "$D"
