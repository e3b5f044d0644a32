#!/bin/bash
# Backups at scale: one member (keel or etcd 3.4) loaded with KEYS keys
# (16-byte keys, 256-byte values, written once each by 100 clients), then
#   - `etcdctl snapshot save`: wall time, the file's size, and the member's
#     RSS before and at its highest during the save (sampled every 50 ms);
#   - restore of that file by the kind's own tool (`keel snapshot restore`,
#     `etcdctl snapshot restore`): wall time;
#   - the restored member's start: time until /health answers.
# Run from the repo root after `cargo build --release --workspace`; needs
# etcd and etcdctl 3.4 on PATH.
#
# usage: benches/scripts/snapshot-bench.sh keel|etcd
set -u
kind=$1
KEYS=${KEYS:-1000000}
BIN=${KEEL_TARGET:-target/release}
export ETCDCTL_API=3
WORK=$(mktemp -d)
PORT=$((20000 + RANDOM % 10000)); URL="http://127.0.0.1:$PORT"
PEER="http://127.0.0.1:$((PORT + 1))"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$WORK"; }
trap cleanup EXIT
server() {
  if [ "$kind" = keel ]; then echo "$BIN/keel"; else command -v etcd; fi
}
start() { # DATA_DIR
  "$(server)" --name bench --data-dir "$1" --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" \
    --initial-cluster "bench=$PEER" --quota-backend-bytes 8589934592 > "$WORK/server.log" 2>&1 &
  pids+=($!)
  local t0; t0=$(date +%s.%N)
  for _ in $(seq 1 600); do
    curl -sf "$URL/health" > /dev/null && break
    sleep 0.05
  done
  ready=$(echo "$(date +%s.%N) - $t0" | bc)
}
stop() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null; unset 'pids[-1]'; }
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

start "$WORK/data"
$BIN/keel-load --endpoints "$URL" --conns 10 --clients 100 --total "$KEYS" --key-size 16 --val-size 256 \
  put --key-space-size "$KEYS" --sequential-keys > "$WORK/load.out" 2>&1
pid=${pids[-1]}
base=$(rss "$pid")
peak=$base
( while kill -0 "$pid" 2>/dev/null; do rss "$pid"; sleep 0.05; done ) > "$WORK/rss" &
sampler=$!
t0=$(date +%s.%N)
etcdctl --endpoints "$URL" snapshot save "$WORK/backup.db" > /dev/null 2>&1 || echo "snapshot save failed"
save=$(echo "$(date +%s.%N) - $t0" | bc)
kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
peak=$(sort -n "$WORK/rss" | tail -1)
size=$(stat -c %s "$WORK/backup.db")
count() { curl -s -X POST "$URL/v3/kv/range" -d '{"key":"AA==","range_end":"AA==","count_only":true}' | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", "0"))'; }
keys=$(count)
stop
t0=$(date +%s.%N)
if [ "$kind" = keel ]; then
  $BIN/keel snapshot restore "$WORK/backup.db" --data-dir "$WORK/restored" --name bench \
    --initial-cluster "bench=$PEER" --initial-advertise-peer-urls "$PEER" 2> /dev/null
else
  etcdctl snapshot restore "$WORK/backup.db" --data-dir "$WORK/restored" --name bench \
    --initial-cluster "bench=$PEER" --initial-advertise-peer-urls "$PEER" > /dev/null 2>&1
fi
restore=$(echo "$(date +%s.%N) - $t0" | bc)
start "$WORK/restored"
rss_restored=$(rss "${pids[-1]}")
restored_keys=$(count)
echo "$kind: $KEYS keys; snapshot save ${save}s, file $((size / 1048576)) MiB; member RSS ${base} MiB before, ${peak} MiB at most during the save; restore ${restore}s; restored member ready in ${ready}s with RSS ${rss_restored} MiB (keys: $keys before, $restored_keys restored)"
