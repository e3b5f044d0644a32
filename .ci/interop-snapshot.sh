#!/usr/bin/env bash
# Backups and migration with real etcd 3.4.23 and etcdctl 3.4: etcd writes
# keys, leases, users and roles and compacts; `etcdctl snapshot save`;
# `keel snapshot restore`; keel serves the same history; keel writes on;
# `etcdctl snapshot save` against keel; `etcdctl snapshot restore`; etcd
# serves the same history again. Usage: interop-snapshot.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "$1")
ETCD=${ETCD:-etcd}
WORK=$(mktemp -d)
export ETCDCTL_API=3
source "$(dirname "$0")/lib.sh"
PIDS=()
trap stop_all EXIT

fail() { fail_with_logs "$@"; }

# start BINARY NAME DATA_DIR CLIENT_URL PEER_URL TOKEN: one member of its own.
start() {
  "$1" --name "$2" --data-dir "$3" \
    --listen-client-urls "$4" --advertise-client-urls "$4" \
    --listen-peer-urls "$5" --initial-advertise-peer-urls "$5" \
    --initial-cluster "$2=$5" --initial-cluster-token "$6" >>"$WORK/$2.log" 2>&1 &
  PIDS+=($!)
  wait_healthy "$2" "$4" "$!" 30
}
stop() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }

# What a client sees of a store: the revision, then every key with its
# value, revisions, version and lease.
history() {
  e "$1" get "" --from-key -w json | json '"\n".join([str(d["header"]["revision"])] + [
    " ".join(str(kv.get(f, 0)) for f in ("key", "value", "create_revision", "mod_revision", "version", "lease"))
    for kv in d.get("kvs", [])])'
}
leases() { e "$1" lease list | tail -n +2 | sort | tr '\n' ' '; }
hashkv() { e "$1" endpoint hashkv --rev "$2" | awk '{print $2}'; }
auth_state() { e "$1" user list | tr '\n' ' '; e "$1" role get r | tr '\n' ' '; e "$1" user get u | tr '\n' ' '; }

# --- etcd writes a history ---
port c; port p; ETCD_URL="http://127.0.0.1:$c"
start "$ETCD" etcd1 "$WORK/etcd1" "$ETCD_URL" "http://127.0.0.1:$p" first
for i in $(seq 1 60); do e "$ETCD_URL" put "k$((i % 25))" "v$i" >/dev/null; done
LEASE=$(e "$ETCD_URL" lease grant 600 | awk '{print $2}')
e "$ETCD_URL" put leased x --lease="$LEASE" >/dev/null
e "$ETCD_URL" del k3 >/dev/null
e "$ETCD_URL" compact 30 >/dev/null
e "$ETCD_URL" user add root:rootpw >/dev/null
e "$ETCD_URL" user grant-role root root >/dev/null
e "$ETCD_URL" user add u:upw >/dev/null
e "$ETCD_URL" role add r >/dev/null
e "$ETCD_URL" role grant-permission r readwrite k0 k9 >/dev/null
e "$ETCD_URL" user grant-role u r >/dev/null
e "$ETCD_URL" snapshot save "$WORK/etcd.db" >/dev/null 2>&1 || fail "snapshot save against etcd"
ETCD_HISTORY=$(history "$ETCD_URL")
ETCD_REV=$(head -1 <<<"$ETCD_HISTORY")
ETCD_HASH=$(hashkv "$ETCD_URL" "$ETCD_REV")
ETCD_OLD=$(e "$ETCD_URL" get k5 --rev 40 -w json | json 'd["kvs"]')
ETCD_AUTH=$(auth_state "$ETCD_URL")
ETCD_K5=$(e "$ETCD_URL" get k5 --print-value-only)
ETCD_LEASES=$(leases "$ETCD_URL")
stop

expect "snapshot status: keel reads etcd's snapshot as etcdctl does" \
  "$("$KEEL" snapshot status "$WORK/etcd.db" -w json)" "$(etcdctl snapshot status "$WORK/etcd.db" -w json)"
before=$(cd "$WORK/etcd1" && find . -exec ls -ld --time-style=+%s.%N {} + | sort)
out=$("$KEEL" --data-dir "$WORK/etcd1" --listen-client-urls "http://127.0.0.1:$c" 2>&1) && fail "keel started on etcd's data dir"
[[ "$out" == *"keel snapshot restore"* ]] || fail "no migration hint: $out"
expect "an etcd data dir is left alone" "$(cd "$WORK/etcd1" && find . -exec ls -ld --time-style=+%s.%N {} + | sort)" "$before"

# --- etcd -> keel ---
port c; port p; KEEL_URL="http://127.0.0.1:$c"
"$KEEL" snapshot restore "$WORK/etcd.db" --data-dir "$WORK/keel1" --name keel1 \
  --initial-cluster "keel1=http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
  --initial-cluster-token migrated 2>>"$WORK/restore.log" || fail "keel snapshot restore"
start "$KEEL" keel1 "$WORK/keel1" "$KEEL_URL" "http://127.0.0.1:$p" migrated
expect "keel serves etcd's keys, revisions and versions" "$(history "$KEEL_URL")" "$ETCD_HISTORY"
expect "keel's HashKV equals etcd's" "$(hashkv "$KEEL_URL" "$ETCD_REV")" "$ETCD_HASH"
expect "an old revision reads the same" "$(e "$KEEL_URL" get k5 --rev 40 -w json | json 'd["kvs"]')" "$ETCD_OLD"
expect "the compaction came along" "$(e "$KEEL_URL" get k5 --rev 20 2>&1 | tail -1)" \
  "Error: etcdserver: mvcc: required revision has been compacted"
expect "leases" "$(leases "$KEEL_URL")" "$ETCD_LEASES"
expect "users and roles" "$(auth_state "$KEEL_URL")" "$ETCD_AUTH"
expect "auth enable on keel" "$(e "$KEEL_URL" auth enable 2>&1)" "Authentication Enabled"
expect "auth is on" "$(e "$KEEL_URL" get k5 2>&1 | tail -1)" "Error: etcdserver: user name is empty"
expect "etcd's password hashes work in keel" "$(e "$KEEL_URL" --user u:upw get k5 --print-value-only)" "$ETCD_K5"
e "$KEEL_URL" --user root:rootpw auth disable >/dev/null
e "$KEEL_URL" put from-keel yes >/dev/null
e "$KEEL_URL" del k7 >/dev/null
e "$KEEL_URL" snapshot save "$WORK/keel.db" >/dev/null 2>&1 || fail "snapshot save against keel"
KEEL_HISTORY=$(history "$KEEL_URL")
KEEL_REV=$(head -1 <<<"$KEEL_HISTORY")
KEEL_HASH=$(hashkv "$KEEL_URL" "$KEEL_REV")
KEEL_AUTH=$(auth_state "$KEEL_URL")
expect "snapshot status of keel's snapshot" "$(etcdctl snapshot status "$WORK/keel.db" -w json | json 'd["revision"]')" "$KEEL_REV"
stop

# --- keel -> etcd ---
port c; port p; BACK_URL="http://127.0.0.1:$c"
etcdctl snapshot restore "$WORK/keel.db" --data-dir "$WORK/etcd2" --name etcd2 \
  --initial-cluster "etcd2=http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
  --initial-cluster-token back >>"$WORK/restore.log" 2>&1 || fail "etcdctl snapshot restore of keel's snapshot"
start "$ETCD" etcd2 "$WORK/etcd2" "$BACK_URL" "http://127.0.0.1:$p" back
expect "etcd serves keel's keys, revisions and versions" "$(history "$BACK_URL")" "$KEEL_HISTORY"
expect "etcd's HashKV equals keel's" "$(hashkv "$BACK_URL" "$KEEL_REV")" "$KEEL_HASH"
expect "leases back in etcd" "$(leases "$BACK_URL")" "$ETCD_LEASES"
expect "users and roles back in etcd" "$(auth_state "$BACK_URL")" "$KEEL_AUTH"
expect "etcd writes on" "$(e "$BACK_URL" put after back -w json | json 'd["header"]["revision"]')" "$((KEEL_REV + 1))"

echo "snapshot interop: all checks passed"
