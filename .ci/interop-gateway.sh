#!/usr/bin/env bash
# The JSON gateway: the same curl requests against etcd 3.4.23 and keel,
# answers compared after ids, terms and sizes are masked. Usage:
# interop-gateway.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "$1")
ETCD=${ETCD:-etcd}
WORK=$(mktemp -d)
source "$(dirname "$0")/lib.sh"
PIDS=()
trap stop_all EXIT
fail() { fail_with_logs "$@"; }

# Masks what differs between any two members: ids, terms, sizes, indexes,
# TTLs counting down, tokens. Fields etcd 3.5 added (Status's dbSizeQuota)
# and the header etcd 3.5 added to Alarm answers are taken out: keel
# answers as the newer etcd there.
cat > "$WORK/mask.py" <<'PY'
import re, sys
s = sys.stdin.read()
s = re.sub(r'"(cluster_id|member_id|leader|ID)":"?[0-9]+"?', r'"\1":N', s)
s = re.sub(r'"(raft_term|raftTerm)":"[0-9]+"', r'"\1":T', s)
s = re.sub(r'"TTL":"5[0-9]"', '"TTL":"5x"', s)
s = re.sub(r'"(version|dbSize|dbSizeInUse|raftIndex|raftAppliedIndex)":"[^"]*"', r'"\1":V', s)
s = re.sub(r',"dbSizeQuota":"[0-9]+"', '', s)
s = re.sub(r'"token":"[^"]*"', '"token":TOK', s)
s = re.sub(r'"clientURLs":\["http://127.0.0.1:[0-9]+"\]', '"clientURLs":[CLIENT]', s)
s = re.sub(r'^\{"header":\{[^}]*\}\} \[200\] # alarm$', '{} [200] # alarm', s, flags=re.M)
print(s.strip())
PY
mask() { python3 "$WORK/mask.py"; }

# requests URL: every request and its masked answer, one per line.
requests() {
  local U=$1 TOKEN
  p() { echo "== $1 $2"; curl -s --max-time 10 -X POST "$U$1" -d "$2" -w " [%{http_code}]${3:-}" | mask; }
  p /v3/kv/put '{"key":"Zm9v","value":"YmFy"}'
  p /v3/kv/put '{"key":"Zm9v","value":"YmF6","prev_kv":true}'
  p /v3/kv/range '{"key":"Zm9v"}'
  p /v3beta/kv/range '{"key":"Zm9v","count_only":true}'
  p /v3/kv/range '{"key":"Zm9v","revision":"100"}'
  p /v3/kv/range ''
  p /v3/kv/range '{"key":"Zm9v","unknown":1}'
  p /v3/kv/range '{"key":"Zm9v"} trailing'
  p /v3/kv/range 'null'
  p /v3/kv/range '{"key":'
  p /v3/kv/range '{"key":"Zm9v",}'
  p /v3/kv/range '{"key" 1}'
  p /v3/kv/range '[1 2]'
  p /v3/kv/range '"a\qb"'
  p /v3/kv/range 'trUe'
  p /v3/kv/range '12'
  p /v3/kv/nope '{}'
  p /v3/kv/txn '{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VERSION","version":"2"}],"success":[{"request_put":{"key":"Zm9v","value":"MQ=="}}],"failure":[{"request_range":{"key":"Zm9v"}}]}'
  p /v3/kv/txn '{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"bm8="}],"success":[],"failure":[{"request_range":{"key":"Zm9v"}}]}'
  p /v3/kv/compaction '{"revision":"2"}'
  p /v3/kv/range '{"key":"Zm9v","revision":"1"}'
  p /v3/kv/deleterange '{"key":"Zm9v","prev_kv":true}'
  p /v3/kv/range '{"key":"AA==","range_end":"AA==","sort_order":"DESCEND","limit":"1"}'
  p /v3/lease/grant '{"TTL":"60","ID":"1234"}'
  p /v3/lease/timetolive '{"ID":"1234","keys":true}'
  p /v3/kv/lease/leases '{}'
  p /v3/kv/put '{"key":"bGVhc2Vk","value":"eA==","lease":"1234"}'
  p /v3/kv/put '{"key":"bGVhc2Vk","value":"eA==","lease":"999"}'
  p /v3/lease/timetolive '{"ID":"1234","keys":true}'
  p /v3/lease/revoke '{"ID":"1234"}'
  p /v3/lease/revoke '{"ID":"1234"}'
  p /v3/cluster/member/list '{}'
  p /v3/maintenance/status '{}'
  p /v3/maintenance/alarm '{}' ' # alarm'
  p /v3/auth/authenticate '{"name":"root","password":"x"}'
  p /v3/auth/user/add '{"name":"root","password":"pw"}'
  p /v3/auth/user/grant '{"user":"root","role":"root"}'
  p /v3/auth/enable '{}'
  p /v3/kv/range '{"key":"Zm9v"}'
  p /v3/auth/authenticate '{"name":"root","password":"bad"}'
  TOKEN=$(curl -s -X POST "$U/v3/auth/authenticate" -d '{"name":"root","password":"pw"}' | json 'd["token"]')
  echo "== range with Authorization"
  curl -s -X POST "$U/v3/kv/range" -H "Authorization: $TOKEN" -d '{"key":"bGVhc2Vk"}' -w ' [%{http_code}]' | mask
  echo "== disable"
  curl -s -X POST "$U/v3/auth/disable" -H "Authorization: $TOKEN" -d '{}' -w ' [%{http_code}]' | mask
  echo "== GET"; curl -s "$U/v3/kv/range" -w ' [%{http_code}]'; echo
  echo "== watch"
  timeout 3 curl -sN -X POST "$U/v3/watch" -d '{"create_request":{"key":"d2F0Y2g=","start_revision":"1","prev_kv":true}}' > "$WORK/watch.out" &
  local w=$!
  sleep 1
  curl -s -X POST "$U/v3/kv/put" -d '{"key":"d2F0Y2g=","value":"MQ=="}' >/dev/null
  curl -s -X POST "$U/v3/kv/deleterange" -d '{"key":"d2F0Y2g="}' >/dev/null
  wait "$w" || true
  mask < "$WORK/watch.out"
  echo "== keepalive"
  curl -s -X POST "$U/v3/lease/grant" -d '{"TTL":"60","ID":"99"}' >/dev/null
  timeout 1 curl -sN -X POST "$U/v3/lease/keepalive" -d '{"ID":"99"}' | mask || true
}

for server in etcd keel; do
  port c; port p
  url="http://127.0.0.1:$c"
  bin=$ETCD; [ "$server" = keel ] && bin=$KEEL
  "$bin" --name gw --data-dir "$WORK/$server.data" --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:2380" \
    --initial-cluster gw=http://127.0.0.1:2380 >>"$WORK/$server.log" 2>&1 &
  PIDS+=($!)
  wait_healthy "$server" "$url" "$!" 30
  requests "$url" > "$WORK/$server.out"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
done
if ! diff "$WORK/etcd.out" "$WORK/keel.out" >&2; then
  fail "the gateway's answers differ from etcd 3.4.23's (< etcd, > keel)"
fi
echo "ok: $(grep -c '^==' "$WORK/keel.out") gateway requests answered as etcd 3.4.23 answers them"
echo "gateway interop: all checks passed"
