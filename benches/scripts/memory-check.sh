#!/bin/bash
# How much memory does a member hold under large writes? Starts a 3-member
# keel or etcd 3.4 cluster (cluster-lib.sh), has 100 clients put 64 KiB
# values over KEYS keys through all members for SECS seconds, and every 10 s
# prints each member's RSS beside the store's size as the leader reports it
# (etcd_mvcc_db_total_size_in_bytes), and the alarms raised. The space
# quota (etcd's default 2 GiB unless "member args" say otherwise) stops the
# growth with NOSPACE. Run from the repo root after
# `cargo build --release --workspace`.
#
# usage: benches/scripts/memory-check.sh keel|etcd ["member args"]
set -u
kind=$1; sargs=${2:-}
KEYS=${KEYS:-10000}
SECS=${SECS:-600}
BIN=${KEEL_TARGET:-target/release}
. "$(dirname "$0")/cluster-lib.sh"
export ETCDCTL_API=3
start_cluster "$kind" "$sargs"
EPS="${C[0]},${C[1]},${C[2]}"
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 == m {printf "%d", $2}'; }
echo "== $kind x3 [$sargs]: 100 clients, 64 KiB values over $KEYS keys, ${SECS} s"
timeout "$SECS" $BIN/keel-load --endpoints "$EPS" --conns 10 --clients 100 --total 100000000 \
  --key-size 16 --val-size 65536 put --key-space-size "$KEYS" > /dev/null 2>&1 &
load=$!
start=$(date +%s)
peak=0
while kill -0 $load 2>/dev/null; do
  sleep 10
  line="t=$(( $(date +%s) - start ))s"
  for i in 0 1 2; do
    rss=$(ps -o rss= -p "${PIDS[$i]}" | tr -d ' ')
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    line="$line m$i rss=$(( ${rss:-0} / 1024 ))MiB"
  done
  db=$(metric "${C[0]}" etcd_mvcc_db_total_size_in_bytes)
  rev=$(metric "${C[0]}" etcd_debugging_mvcc_current_revision)
  echo "$line store=$(( ${db:-0} / 1048576 ))MiB rev=${rev:-?}"
done
echo "peak member RSS: $(( peak / 1024 )) MiB"
etcdctl --endpoints="$EPS" alarm list
stop_cluster
