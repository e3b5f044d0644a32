#!/bin/bash
# Starts keel or etcd, runs 10,000 one-client puts, prints the server's own
# WAL fsync histogram summary. usage: benches/scripts/wal-fsync-metric.sh keel|etcd
kind=$1; sargs=$2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d ${TMPDIR:-/tmp}/keel-bench.XXXX)
if [ $kind = keel ]; then ${KEEL_TARGET:-target/release}/keel --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT $sargs > $D/log 2>&1 &
else etcd --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT --listen-peer-urls http://127.0.0.1:$PPORT --initial-advertise-peer-urls http://127.0.0.1:$PPORT --initial-cluster default=http://127.0.0.1:$PPORT > $D/log 2>&1 & fi
PID=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
${KEEL_TARGET:-target/release}/keel-load --endpoints http://127.0.0.1:$PORT --total 10000 --val-size 256 put >/dev/null
curl -s http://127.0.0.1:$PORT/metrics | python3 -c '
import sys,re
b=[];s=c=0
for l in sys.stdin:
  m=re.match(r"etcd_disk_wal_fsync_duration_seconds_bucket\{le=\"([^\"]+)\"\} (\d+)",l)
  if m: b.append((float(m.group(1)),int(m.group(2))))
  if l.startswith("etcd_disk_wal_fsync_duration_seconds_sum"): s=float(l.split()[1])
  if l.startswith("etcd_disk_wal_fsync_duration_seconds_count"): c=int(l.split()[1])
p50=next(le for le,n in b if n>=c*0.5); p99=next(le for le,n in b if n>=c*0.99)
print(f"fsyncs={c} mean={s/c*1e6:.1f}us p50<={p50*1e6:.0f}us p99<={p99*1e6:.0f}us")'
kill $PID; wait $PID 2>/dev/null; rm -rf $D
