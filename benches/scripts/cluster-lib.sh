# Sourced by the cluster bench scripts: starts a 3-member keel or etcd 3.4
# cluster on loopback (free ports, fresh data dirs under $D) and stops it.
# After start_cluster: C (client URLs), P (peer URLs), PIDS, D.
# KEEP_LOGS=dir keeps the members' logs (stop_cluster copies them there).
# PIN_MEMBERS=1 runs member i on CPU i mod nproc alone (taskset), as members
# sharing a host should run: keel pins one executor per usable CPU, so
# three unpinned members put all three raft cores on the first CPU.
source "$(dirname "${BASH_SOURCE[0]}")/../../.ci/lib.sh"

# usage: start_cluster keel|etcd "member args"
start_cluster() {
  local kind=$1 sargs=$2 i c p
  D=$(mktemp -d "${TMPDIR:-/tmp}/keel-cluster-bench.XXXX")
  C=() P=() PIDS=()
  for i in 0 1 2; do port c; port p; C+=("http://127.0.0.1:$c"); P+=("http://127.0.0.1:$p"); done
  local initial="m0=${P[0]},m1=${P[1]},m2=${P[2]}"
  for i in 0 1 2; do
    local pin=()
    [ "${PIN_MEMBERS:-0}" = 1 ] && pin=(taskset -c $((i % $(nproc))))
    if [ "$kind" = keel ]; then
      "${pin[@]}" $BIN/keel --name "m$i" --data-dir "$D/m$i" --listen-client-urls "${C[$i]}" \
        --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
        --initial-cluster "$initial" $sargs > "$D/m$i.log" 2>&1 &
    else
      "${pin[@]}" etcd --name "m$i" --data-dir "$D/m$i" --listen-client-urls "${C[$i]}" --advertise-client-urls "${C[$i]}" \
        --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
        --initial-cluster "$initial" $sargs > "$D/m$i.log" 2>&1 &
    fi
    PIDS+=($!)
  done
  for i in 0 1 2; do
    for _ in $(seq 300); do curl -sf --max-time 5 "${C[$i]}/health" >/dev/null && break; sleep 0.1; done
  done
}

# The leader's client URL.
leader_endpoint() {
  ETCDCTL_API=3 etcdctl --endpoints="${C[0]},${C[1]},${C[2]}" endpoint status -w json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print([s["Endpoint"] for s in d if s["Status"]["leader"] == s["Status"]["header"]["member_id"]][0])'
}

stop_cluster() {
  local p
  for p in "${PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null; done
  # KEEP_LOGS=dir: the members' logs are copied there first.
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$D"/m*.log "$KEEP_LOGS"/; fi
  rm -rf "$D"
}
