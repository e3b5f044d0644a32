#!/bin/bash
# Starts keel or etcd 3.4 on free ports with a fresh data dir, runs keel-load
# once per load argument string, stops the server. Run from the repo root.
# With SHOW_WAL_FSYNC=1 it also prints the server's own WAL fsync summary
# (etcd_disk_wal_fsync_duration_seconds) before stopping.
#
# With TLS=dir (certificates as tools/tls-certs.sh makes them) the server
# serves https with mutual TLS (server certificate m0, --client-cert-auth)
# and keel-load connects with dir/client.crt.
#
# usage: benches/scripts/compare.sh keel|etcd "server args" "load args"...
set -u
kind=$1; sargs=$2; shift 2
BIN=${KEEL_TARGET:-target/release}
source "$(dirname "${BASH_SOURCE[0]}")/../../.ci/lib.sh"
port PORT; port PPORT
D=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXX")
SCHEME=http TLS_SERVER=() TLS_LOAD=() CURL=(curl -sf --max-time 5)
if [ -n "${TLS:-}" ]; then
  SCHEME=https
  TLS_SERVER=(--cert-file "$TLS/m0.crt" --key-file "$TLS/m0.key" --client-cert-auth --trusted-ca-file "$TLS/ca.crt")
  TLS_LOAD=(--cacert "$TLS/ca.crt" --cert "$TLS/client.crt" --key "$TLS/client.key")
  CURL+=(--cacert "$TLS/ca.crt" --cert "$TLS/client.crt" --key "$TLS/client.key")
fi
URL="$SCHEME://127.0.0.1:$PORT"
if [ "$kind" = keel ]; then
  $BIN/keel --data-dir "$D/data" --listen-client-urls "$URL" "${TLS_SERVER[@]}" $sargs > "$D/log" 2>&1 &
else
  etcd --data-dir "$D/data" --listen-client-urls "$URL" \
    --advertise-client-urls "$URL" --listen-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" --initial-cluster "default=http://127.0.0.1:$PPORT" \
    "${TLS_SERVER[@]}" $sargs > "$D/log" 2>&1 &
fi
PID=$!
for _ in $(seq 100); do "${CURL[@]}" "$URL/health" >/dev/null && break; sleep 0.1; done
echo "$PID" > "${TMPDIR:-/tmp}/keel-bench.pid"
for la in "$@"; do
  echo "== $kind [$sargs${TLS:+ TLS}] $la"
  $BIN/keel-load --endpoints "$URL" "${TLS_LOAD[@]}" $la | grep -E "Requests/sec|p50|p99 "
done
if [ -n "${HANDSHAKES:-}" ]; then
  # New TLS sessions per second for HANDSHAKES seconds (no session reuse).
  echo "== $kind TLS handshakes (openssl s_time -new, ${HANDSHAKES}s)"
  openssl s_time -connect "127.0.0.1:$PORT" -new -time "$HANDSHAKES" -CAfile "$TLS/ca.crt" \
    -cert "$TLS/client.crt" -key "$TLS/client.key" 2>/dev/null | grep -E "connections in .* real seconds"
fi
if [ "${SHOW_WAL_FSYNC:-0}" = 1 ]; then
  "${CURL[@]}" "$URL/metrics" | python3 -c '
import re, sys
s = c = 0
for l in sys.stdin:
    if l.startswith("etcd_disk_wal_fsync_duration_seconds_sum"): s = float(l.split()[1])
    if l.startswith("etcd_disk_wal_fsync_duration_seconds_count"): c = int(l.split()[1])
print(f"WAL fsyncs={c} mean={s / max(c, 1) * 1e6:.1f}us")'
fi
kill "$PID"; wait "$PID" 2>/dev/null; rm -rf "$D"
