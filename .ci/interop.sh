#!/usr/bin/env bash
# Interop with real etcdctl (v3.4): runs a keel binary on a free port and
# checks etcdctl's observable results. Usage: interop.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "$1")
WORK=$(mktemp -d)
source "$(dirname "$0")/lib.sh"
port PORT; port peer_port
PEER="http://127.0.0.1:$peer_port"
export ETCDCTL_API=3
E=(etcdctl --endpoints="127.0.0.1:$PORT" --command-timeout=5s --dial-timeout=3s)
PID=""

cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; echo "--- keel log ---" >&2; tail -50 "$WORK/keel.log" >&2 || true; exit 1; }

start() {
  "$KEEL" --data-dir "$WORK/data" --listen-client-urls "http://127.0.0.1:$PORT" \
    --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" "$@" >>"$WORK/keel.log" 2>&1 &
  PID=$!
  wait_healthy keel "http://127.0.0.1:$PORT" "$PID" 20
}

start

expect "put" "$("${E[@]}" put foo bar)" "OK"
expect "get" "$("${E[@]}" get foo --print-value-only)" "bar"
expect "revision after the first put" "$("${E[@]}" get nothing -w json | json 'd["header"]["revision"]')" "2"

for i in 1 2 3 4 5; do "${E[@]}" put "dir/k$i" "v$i" >/dev/null; done   # revisions 3..7
expect "get --prefix" "$("${E[@]}" get dir/ --prefix --keys-only | grep -c .)" "5"
expect "get --prefix --limit" "$("${E[@]}" get dir/ --prefix --limit 2 --keys-only | grep -v '^$' | tr '\n' ' ')" "dir/k1 dir/k2 "
expect "limit sets more and count" "$("${E[@]}" get dir/ --prefix --limit 2 -w json | json '(d["more"], d["count"])')" "(True, 5)"
expect "sort-by MODIFY DESCEND" "$("${E[@]}" get dir/ --prefix --sort-by=MODIFY --order=DESCEND --keys-only | grep -v '^$' | head -2 | tr '\n' ' ')" "dir/k5 dir/k4 "
expect "sort-by VALUE" "$("${E[@]}" get dir/ --prefix --sort-by=VALUE --order=ASCEND --print-value-only | grep -v '^$' | head -1)" "v1"
"${E[@]}" put dir/k1 changed >/dev/null                                   # revision 8
expect "-w json revisions" "$("${E[@]}" get dir/k1 -w json | json '[d["header"]["revision"], d["kvs"][0]["create_revision"], d["kvs"][0]["mod_revision"], d["kvs"][0]["version"]]')" "[8, 3, 8, 2]"
expect "get --rev (history)" "$("${E[@]}" get dir/k1 --rev=7 --print-value-only)" "v1"

del_out=$("${E[@]}" del dir/k5 --prev-kv)                                   # revision 9
expect "del --prev-kv" "$(echo "$del_out" | tr '\n' ' ')" "1 dir/k5 v5 "
expect "deleted" "$("${E[@]}" get dir/k5 -w json | json 'd.get("count", 0)')" "0"

txn_out=$(printf 'value("foo") = "bar"\n\nput foo baz\nget foo\n\nput foo nope\n\n' | "${E[@]}" txn)
expect "txn success branch" "$(echo "$txn_out" | tr '\n' ' ')" "SUCCESS  OK  foo baz "
txn_fail=$(printf 'value("foo") = "bar"\n\nput foo again\n\nput other yes\n\n' | "${E[@]}" txn -w json)
expect "txn failure branch" "$(echo "$txn_fail" | json 'd.get("succeeded", False)')" "False"
expect "txn else applied" "$("${E[@]}" get other --print-value-only)" "yes"
expect "txn is one revision" "$("${E[@]}" get other -w json | json 'd["kvs"][0]["mod_revision"]')" "11"

expect "compact" "$("${E[@]}" compact 8)" "compacted revision 8"
compacted=$("${E[@]}" get dir/k1 --rev=7 2>&1 || true)
[[ "$compacted" == *"etcdserver: mvcc: required revision has been compacted"* ]] || fail "compacted read: $compacted"
echo "ok: reading a compacted revision fails with etcd's error"
expect "read at the compaction revision" "$("${E[@]}" get dir/k1 --rev=8 --print-value-only)" "changed"
future=$("${E[@]}" get foo --rev=999 2>&1 || true)
[[ "$future" == *"required revision is a future revision"* ]] || fail "future read: $future"
echo "ok: future revision refused"
empty=$("${E[@]}" put "" x 2>&1 || true)
[[ "$empty" == *"etcdserver: key is not provided"* ]] || fail "empty key: $empty"
echo "ok: empty key refused"

expect "endpoint health" "$("${E[@]}" endpoint health 2>&1 | grep -c 'is healthy')" "1"
expect "endpoint status version" "$("${E[@]}" endpoint status -w json | json 'd[0]["Status"]["version"]')" "3.6.0"
expect "endpoint hashkv (revision, compaction)" "$("${E[@]}" endpoint hashkv -w json | json '(d[0]["HashKV"]["header"]["revision"], d[0]["HashKV"]["compact_revision"], d[0]["HashKV"]["hash"] > 0)')" "(11, 8, True)"
expect "member list" "$("${E[@]}" member list | grep -c default)" "1"
expect "/metrics" "$(curl -sf --max-time 5 "http://127.0.0.1:$PORT/metrics" | grep -c '^etcd_disk_wal_fsync_duration_seconds_count')" "1"

# Durability across kill -9.
kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=""
start
expect "after kill -9" "$("${E[@]}" get foo --print-value-only)" "baz"
expect "revision after restart" "$("${E[@]}" get foo -w json | json 'd["header"]["revision"]')" "11"
after=$("${E[@]}" get dir/k1 --rev=7 2>&1 || true)
[[ "$after" == *"required revision has been compacted"* ]] || fail "compaction after restart: $after"
echo "ok: compaction survives restart"

# watch: a background watcher, bounded by timeout, sees the next puts.
timeout 5 "${E[@]}" watch wkey > "$WORK/watch.out" 2>&1 &
WPID=$!
sleep 1
"${E[@]}" put wkey one >/dev/null
"${E[@]}" put wkey two >/dev/null
wait "$WPID" || true
expect "watch" "$(tr '\n' ' ' < "$WORK/watch.out")" "PUT wkey one PUT wkey two "
wrev=$("${E[@]}" get wkey -w json | json 'd["kvs"][0]["create_revision"]')
expect "watch --rev (history)" "$(timeout 3 "${E[@]}" watch wkey --rev="$wrev" --prev-kv 2>&1 | head -8 | tr '\n' ' ')" "PUT wkey one PUT wkey one wkey two "
expect "watch --prefix from history" "$(timeout 3 "${E[@]}" watch dir/ --prefix --rev=9 2>&1 | head -3 | tr '\n' ' ')" "DELETE dir/k5  "
compacted_watch=$(timeout 3 "${E[@]}" watch dir/k1 --rev=2 2>&1 || true)
[[ "$compacted_watch" == *"required revision has been compacted"* ]] || fail "watch below compaction: $compacted_watch"
echo "ok: watch below the compaction point is canceled"

# leases
lease_out=$("${E[@]}" lease grant 600)
LID=$(echo "$lease_out" | awk '{print $2}')
expect "lease grant" "$(echo "$lease_out" | sed 's/lease [0-9a-f]* /lease ID /')" "lease ID granted with TTL(600s)"
expect "put --lease" "$("${E[@]}" put leased v --lease="$LID")" "OK"
expect "lease timetolive --keys" "$("${E[@]}" lease timetolive "$LID" --keys | sed 's/remaining([0-9]*s)/remaining(Ns)/; s/lease [0-9a-f]* /lease ID /')" "lease ID granted with TTL(600s), remaining(Ns), attached keys([leased])"
expect "lease keep-alive --once" "$("${E[@]}" lease keep-alive --once "$LID" | sed 's/lease [0-9a-f]* /lease ID /')" "lease ID keepalived with TTL(600)"
expect "lease list" "$("${E[@]}" lease list | grep -c "$LID")" "1"
expect "lease revoke" "$("${E[@]}" lease revoke "$LID" | sed 's/lease [0-9a-f]* /lease ID /')" "lease ID revoked"
expect "revoke deleted the key" "$("${E[@]}" get leased -w json | json 'd.get("count", 0)')" "0"
expect "timetolive of a revoked lease" "$("${E[@]}" lease timetolive "$LID" | sed 's/lease [0-9a-f]* /lease ID /')" "lease ID already expired"
SHORT=$("${E[@]}" lease grant 2 | awk '{print $2}')
"${E[@]}" put expiring v --lease="$SHORT" >/dev/null
for _ in $(seq 1 60); do
  [ "$("${E[@]}" get expiring -w json | json 'd.get("count", 0)')" == "0" ] && break
  sleep 0.1
done
expect "lease expiry deletes the key" "$("${E[@]}" get expiring -w json | json 'd.get("count", 0)')" "0"

# lock: the second holder runs only after the first one finished
timeout 10 "${E[@]}" lock ilock -- sh -c "echo a-start >> $WORK/lock.out; sleep 1; echo a-end >> $WORK/lock.out" >/dev/null 2>&1 &
LK1=$!
sleep 0.3
timeout 10 "${E[@]}" lock ilock -- sh -c "echo b-start >> $WORK/lock.out" >/dev/null 2>&1 &
LK2=$!
wait "$LK1" || true
wait "$LK2" || true
expect "lock mutual exclusion" "$(tr '\n' ' ' < "$WORK/lock.out")" "a-start a-end b-start "
# elect: a campaigner wins, an observer sees it
timeout 4 "${E[@]}" elect ielect alice > "$WORK/elect.out" 2>&1 &
EL=$!
sleep 0.5
expect "elect -l (observe)" "$(timeout 2 "${E[@]}" elect -l ielect 2>/dev/null | head -2 | sed 's|ielect/[0-9a-f]*|ielect/ID|' | tr '\n' ' ')" "ielect/ID alice "
wait "$EL" || true
expect "elect (campaign)" "$(head -2 "$WORK/elect.out" | sed 's|ielect/[0-9a-f]*|ielect/ID|' | tr '\n' ' ')" "ielect/ID alice "

# etcdctl's data-scale check: 10,000 puts by 50 clients, process memory
# read from /metrics, then compaction and defragmentation.
datascale=$("${E[@]}" check datascale --load=s --auto-compact --auto-defrag 2>&1)
[[ "$datascale" == *"PASS: Approximate system memory used"* ]] || fail "check datascale: $datascale"
echo "ok: check datascale"

# space quota: restarted with a small quota, puts fail with NOSPACE as etcd's
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
start --quota-backend-bytes 200000
big=$(head -c 20000 /dev/zero | tr '\0' x)
nospace=""
for i in $(seq 1 40); do
  if ! out=$("${E[@]}" put "quota/$i" "$big" 2>&1); then nospace=$out; break; fi
done
[[ "$nospace" == *"Error: etcdserver: mvcc: database space exceeded"* ]] || fail "quota: $nospace"
echo "ok: a put past the quota fails with etcd's NOSPACE error"
MID=$("${E[@]}" endpoint status -w json | json 'd[0]["Status"]["header"]["member_id"]')
expect "alarm list" "$("${E[@]}" alarm list)" "memberID:$MID alarm:NOSPACE "
expect "endpoint status errors" "$("${E[@]}" endpoint status -w json | json 'd[0]["Status"]["errors"]')" "['memberID:$MID alarm:NOSPACE ']"
"${E[@]}" del quota/ --prefix >/dev/null
expect "alarm disarm" "$("${E[@]}" alarm disarm)" "memberID:$MID alarm:NOSPACE "
expect "alarm list after disarm" "$("${E[@]}" alarm list)" ""
expect "put after disarm" "$("${E[@]}" put quota/after v)" "OK"

echo "interop: all checks passed"
