#!/bin/bash
# Starts keel or etcd 3.4 on free ports with a fresh data dir, runs keel-load
# once per load argument string, stops the server. Run from the repo root.
# With SHOW_WAL_FSYNC=1 it also prints the server's own WAL fsync summary
# (etcd_disk_wal_fsync_duration_seconds) before stopping.
#
# usage: benches/scripts/compare.sh keel|etcd "server args" "load args"...
set -u
kind=$1; sargs=$2; shift 2
BIN=${KEEL_TARGET:-target/release}
source "$(dirname "${BASH_SOURCE[0]}")/../../.ci/lib.sh"
port PORT; port PPORT
D=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXX")
if [ "$kind" = keel ]; then
  $BIN/keel --data-dir "$D/data" --listen-client-urls "http://127.0.0.1:$PORT" $sargs > "$D/log" 2>&1 &
else
  etcd --data-dir "$D/data" --listen-client-urls "http://127.0.0.1:$PORT" \
    --advertise-client-urls "http://127.0.0.1:$PORT" --listen-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" --initial-cluster "default=http://127.0.0.1:$PPORT" \
    $sargs > "$D/log" 2>&1 &
fi
PID=$!
for _ in $(seq 100); do curl -sf --max-time 5 "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
echo "$PID" > "${TMPDIR:-/tmp}/keel-bench.pid"
for la in "$@"; do
  echo "== $kind [$sargs] $la"
  $BIN/keel-load --endpoints "http://127.0.0.1:$PORT" $la | grep -E "Requests/sec|p50|p99 "
done
if [ "${SHOW_WAL_FSYNC:-0}" = 1 ]; then
  curl -s "http://127.0.0.1:$PORT/metrics" | python3 -c '
import re, sys
s = c = 0
for l in sys.stdin:
    if l.startswith("etcd_disk_wal_fsync_duration_seconds_sum"): s = float(l.split()[1])
    if l.startswith("etcd_disk_wal_fsync_duration_seconds_count"): c = int(l.split()[1])
print(f"WAL fsyncs={c} mean={s / max(c, 1) * 1e6:.1f}us")'
fi
kill "$PID"; wait "$PID" 2>/dev/null; rm -rf "$D"
