#!/bin/bash
# Starts keel or etcd 3.4 on free ports with a fresh data dir, runs keel-load
# once per load argument string, stops the server. Run from the repo root.
# usage: benches/scripts/compare.sh keel|etcd "server args" "load args"...
kind=$1; sargs=$2; shift 2
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d ${TMPDIR:-/tmp}/keel-bench.XXXX)
if [ $kind = keel ]; then
  ${KEEL_TARGET:-target/release}/keel --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT $sargs > $D/log 2>&1 &
else
  etcd --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT --listen-peer-urls http://127.0.0.1:$PPORT --initial-advertise-peer-urls http://127.0.0.1:$PPORT --initial-cluster default=http://127.0.0.1:$PPORT $sargs > $D/log 2>&1 &
fi
PID=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
echo $PID > ${TMPDIR:-/tmp}/keel-bench.pid
for la in "$@"; do
  echo "== $kind [$sargs] $la"
  ${KEEL_TARGET:-target/release}/keel-load --endpoints http://127.0.0.1:$PORT $la | grep -E "Requests/sec|p50|p99 "
done
kill $PID; wait $PID 2>/dev/null; rm -rf $D
