#!/usr/bin/env bash
# etcdctl 3.4's user, role, auth and --user flows against one member: the
# output must equal what etcd 3.4.23 printed for the same commands
# (.ci/auth-flow.expected). etcdctl's retry warnings carry timestamps and
# ids; only the gRPC error in them is kept.
#
# Usage: interop-auth.sh path/to/keel
#        interop-auth.sh --record path/to/etcd   (rewrites the expected file)
set -euo pipefail
RECORD=0
if [ "${1:-}" = --record ]; then RECORD=1; shift; fi
BIN=$(realpath "$1")
WORK=$(mktemp -d)
HERE=$(cd "$(dirname "$0")" && pwd)
export ETCDCTL_API=3
source "$HERE/lib.sh"
port PORT; port PEER_PORT
EP="http://127.0.0.1:$PORT"
PEER="http://127.0.0.1:$PEER_PORT"
PID=""
cleanup() {
  [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -30 "$WORK/server.log" >&2 || true; exit 1; }

"$BIN" --name default --data-dir "$WORK/data" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" \
  --initial-cluster "default=$PEER" >"$WORK/server.log" 2>&1 &
PID=$!
wait_healthy server "$EP" "$PID" 20

# r CMD...: runs etcdctl with CMD, prints the command, its output (retry
# warnings reduced to their error) and exit code.
r() {
  echo "\$ etcdctl $*"
  local rc=0
  etcdctl --endpoints="$EP" --command-timeout=10s "$@" >"$WORK/out" 2>&1 || rc=$?
  sed -E 's/^\{"level":"warn".*"error":"(.*)"\}$/warn: \1/' "$WORK/out"
  echo "rc=$rc"
}

flow() {
  r auth enable
  r user add root:rootpw
  r auth enable
  r role add root
  r user grant-role root root
  r auth enable
  r put k v
  r --user root:wrong put k v
  r --user root:rootpw put k v
  r --user root:rootpw user add alice:apw
  r --user root:rootpw role add r1
  r --user root:rootpw role add r1
  r --user root:rootpw role grant-permission r1 readwrite foo/ --prefix=true
  r --user root:rootpw role grant-permission r1 read a
  r --user root:rootpw role grant-permission r1 write b c
  r --user root:rootpw role grant-permission r1 read x --from-key
  r --user root:rootpw role get r1
  r --user root:rootpw user grant-role alice r1
  r --user root:rootpw user get alice
  r --user root:rootpw user get alice --detail
  r --user root:rootpw user list
  r --user root:rootpw role list
  r --user alice:apw put foo/1 one
  r --user alice:apw get foo/1
  r --user alice:apw get foo/ --prefix
  r --user alice:apw get foo/ foo1
  r --user alice:apw put k 1
  r --user alice:apw get k
  r --user alice:apw put a 1
  r --user alice:apw put bb 1
  r --user alice:apw get bb
  r --user alice:apw get zz
  r --user alice:apw user list
  r --user alice:apw user get alice
  r --user alice:apw user get root
  r --user alice:apw role get r1
  r --user alice:apw role add r2
  r --user root:rootpw user revoke-role alice nope
  r --user root:rootpw role revoke-permission r1 zz
  r --user root:rootpw user delete root
  r --user root:rootpw role delete root
  r --user root:rootpw user revoke-role root root
  r --user root:rootpw user get nobody
  r --user root:rootpw role get nobody
  r --user root:rootpw user add root:x
  r --user root:rootpw user add nopw --no-password
  r --user nopw:x get a
  r --user alice:apw alarm list
  r --user root:rootpw role revoke-permission r1 foo/ --prefix=true
  r --user alice:apw get foo/1
  r --user root:rootpw user passwd alice --interactive=false <<<"newpw"
  r --user alice:apw get foo/1
  r --user alice:newpw get a --print-value-only
  r --user root:rootpw user delete alice
  r --user root:rootpw role delete r1
  r --user root:rootpw user list
  r --user root:rootpw role list
  r --user root:rootpw auth disable
  r get foo/1 --print-value-only
  r user list
}

flow >"$WORK/got"
if [ "$RECORD" = 1 ]; then
  cp "$WORK/got" "$HERE/auth-flow.expected"
  echo "recorded $(wc -l <"$HERE/auth-flow.expected") lines"
  exit 0
fi
diff -u "$HERE/auth-flow.expected" "$WORK/got" || fail "etcdctl auth flows differ from etcd 3.4.23's"
echo "== auth interop passed ($(grep -c '^\$ etcdctl' "$WORK/got") commands as etcd 3.4.23)"
