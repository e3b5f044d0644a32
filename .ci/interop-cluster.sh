#!/usr/bin/env bash
# Interop with real etcdctl (v3.4) against a 3-member keel cluster on
# loopback. Usage: interop-cluster.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "$1")
WORK=$(mktemp -d)
export ETCDCTL_API=3
source "$(dirname "$0")/lib.sh"
CLIENT=() PEER=() PIDS=()
for i in 0 1 2; do port c; port p; CLIENT+=("http://127.0.0.1:$c"); PEER+=("http://127.0.0.1:$p"); done
INITIAL="m0=${PEER[0]},m1=${PEER[1]},m2=${PEER[2]}"
ALL="${CLIENT[0]},${CLIENT[1]},${CLIENT[2]}"
trap stop_all EXIT

fail() {
  echo "FAIL: $*" >&2
  for i in 0 1 2; do echo "--- m$i log ---" >&2; tail -30 "$WORK/m$i.log" >&2 || true; done
  exit 1
}

for i in 0 1 2; do
  "$KEEL" --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "${CLIENT[$i]}" --listen-peer-urls "${PEER[$i]}" \
    --initial-advertise-peer-urls "${PEER[$i]}" --initial-cluster "$INITIAL" \
    --initial-cluster-token interop >>"$WORK/m$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do wait_healthy "m$i" "${CLIENT[$i]}" "${PIDS[$i]}" 30; done

expect "member list" "$(e "${CLIENT[0]}" member list | cut -d, -f3,5 | sort | tr -d ' ' | tr '\n' ' ')" \
  "m0,${CLIENT[0]} m1,${CLIENT[1]} m2,${CLIENT[2]} "
status=$(e "${CLIENT[0]}" endpoint status --cluster -w json)
expect "endpoint status --cluster" "$(echo "$status" | json 'len(d)')" "3"
expect "one leader for all" "$(echo "$status" | json 'len({s["Status"]["leader"] for s in d})')" "1"
expect "the leader is a member" "$(echo "$status" | json 'sum(s["Status"]["leader"] == s["Status"]["header"]["member_id"] for s in d)')" "1"
expect "endpoint health --cluster" "$(e "${CLIENT[0]}" endpoint health --cluster 2>&1 | grep -c 'is healthy')" "3"

expect "put on m0" "$(e "${CLIENT[0]}" put shared value)" "OK"
expect "get from m2" "$(e "${CLIENT[2]}" get shared --print-value-only)" "value"
expect "put on m1" "$(e "${CLIENT[1]}" put shared other)" "OK"
expect "get from m0" "$(e "${CLIENT[0]}" get shared --print-value-only)" "other"
expect "same revision everywhere" \
  "$(for i in 0 1 2; do e "${CLIENT[$i]}" get shared -w json --consistency=s | json 'd["header"]["revision"]'; done | sort -u | wc -l)" "1"

leader=$(echo "$status" | json 'd[0]["Status"]["leader"]')
target=$(echo "$status" | json '[s["Status"]["header"]["member_id"] for s in d if s["Status"]["header"]["member_id"] != d[0]["Status"]["leader"]][0]')
target_hex=$(printf '%x' "$target")
moved=$(e "$ALL" move-leader "$target_hex")
[[ "$moved" == *"Leadership transferred"* ]] || fail "move-leader: $moved"
expect "move-leader" "$(e "${CLIENT[0]}" endpoint status --cluster -w json | json 'len({s["Status"]["leader"] for s in d})'):$(e "${CLIENT[1]}" endpoint status -w json | json 'd[0]["Status"]["leader"]')" "1:$target"

added=$(e "${CLIENT[0]}" member add m3 --peer-urls=http://127.0.0.1:1 --learner)
[[ "$added" == *'ETCD_INITIAL_CLUSTER_STATE="existing"'* ]] || fail "member add: $added"
new_id=$(awk 'NR == 1 {print $2}' <<<"$added")
expect "learner listed" "$(e "${CLIENT[1]}" member list | grep -c "$new_id, unstarted.*true\|$new_id, started.*true")" "1"
expect "member remove" "$(e "${CLIENT[2]}" member remove "$new_id" | grep -c removed)" "1"
expect "member list after remove" "$(e "${CLIENT[0]}" member list | grep -c .)" "3"
expect "/metrics has_leader" "$(curl -sf --max-time 5 "${CLIENT[1]}/metrics" | grep '^etcd_server_has_leader ')" "etcd_server_has_leader 1"

# watches and leases across members
timeout 4 etcdctl --endpoints="${CLIENT[2]}" watch cw > "$WORK/cw.out" 2>&1 &
CW=$!
sleep 0.7
e "${CLIENT[0]}" put cw from-m0 >/dev/null
wait "$CW" || true
expect "watch on m2 sees a put on m0" "$(tr '\n' ' ' < "$WORK/cw.out")" "PUT cw from-m0 "
CL=$(e "${CLIENT[1]}" lease grant 600 | awk '{print $2}')
e "${CLIENT[1]}" put cl v --lease="$CL" >/dev/null
expect "keep-alive through m2" "$(e "${CLIENT[2]}" lease keep-alive --once "$CL" | sed 's/lease [0-9a-f]* /lease ID /')" "lease ID keepalived with TTL(600)"
expect "timetolive through m0" "$(e "${CLIENT[0]}" lease timetolive "$CL" --keys | sed 's/remaining([0-9]*s)/remaining(Ns)/; s/lease [0-9a-f]* /lease ID /')" "lease ID granted with TTL(600s), remaining(Ns), attached keys([cl])"
e "${CLIENT[2]}" lease revoke "$CL" >/dev/null
expect "revoke through m2 removed the key on m1" "$(e "${CLIENT[1]}" get cl -w json | json 'd.get("count", 0)')" "0"

# maintenance across members, with etcdctl's outputs
expect "endpoint hashkv --cluster: one hash" "$(e "${CLIENT[0]}" endpoint hashkv --cluster | awk '{print $2}' | sort -u | wc -l)" "1"
expect "defrag --cluster" "$(e "${CLIENT[0]}" defrag --cluster | sort | tr '\n' ' ')" \
  "$(for u in "${CLIENT[@]}"; do echo "Finished defragmenting etcd member[$u]"; done | sort | tr '\n' ' ')"
expect "endpoint hashkv --cluster after defrag" "$(e "${CLIENT[0]}" endpoint hashkv --cluster | awk '{print $2}' | sort -u | wc -l)" "1"

echo "cluster interop: all checks passed"
