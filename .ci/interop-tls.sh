#!/usr/bin/env bash
# Interop over TLS with real etcdctl (v3.4) and curl: a keel member started
# with the flags of kubeadm's etcd manifest (https client and peer URLs,
# mutual TLS, a metrics URL, the initial corruption check), certificates
# made here with openssl. Usage: interop-tls.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "$1")
WORK=$(mktemp -d)
source "$(dirname "$0")/lib.sh"
port PORT; port TLS_PORT
export ETCDCTL_API=3
PID=""

cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; echo "--- keel log ---" >&2; tail -50 "$WORK/keel.log" >&2 || true; exit 1; }

# A CA, a server certificate and a client one, for 127.0.0.1.
bash "$(dirname "$0")/../tools/tls-certs.sh" "$WORK" server >/dev/null

# The flags of kubeadm's etcd manifest (static pod), written as kubeadm
# writes them, plus a plain client URL for the health wait.
port peer_port; PEER="https://127.0.0.1:$peer_port"
port METRICS_PORT
"$KEEL" --advertise-client-urls="https://127.0.0.1:$TLS_PORT" \
  --cert-file="$WORK/server.crt" --client-cert-auth=true --data-dir="$WORK/data" \
  --experimental-initial-corrupt-check=true --experimental-watch-progress-notify-interval=5s \
  --initial-advertise-peer-urls="$PEER" --initial-cluster="node1=$PEER" \
  --key-file="$WORK/server.key" \
  --listen-client-urls="http://127.0.0.1:$PORT,https://127.0.0.1:$TLS_PORT" \
  --listen-metrics-urls="http://127.0.0.1:$METRICS_PORT" --listen-peer-urls="$PEER" --name=node1 \
  --peer-cert-file="$WORK/server.crt" --peer-client-cert-auth=true --peer-key-file="$WORK/server.key" \
  --peer-trusted-ca-file="$WORK/ca.crt" --snapshot-count=10000 --trusted-ca-file="$WORK/ca.crt" \
  >>"$WORK/keel.log" 2>&1 &
PID=$!
wait_healthy keel "http://127.0.0.1:$PORT" "$PID" 20
expect "metrics URL (kubeadm's liveness probe: /health)" \
  "$(curl -sf --max-time 5 "http://127.0.0.1:$METRICS_PORT/health" | json 'd["health"]')" "true"

S=(etcdctl --endpoints="https://127.0.0.1:$TLS_PORT" --command-timeout=5s --dial-timeout=3s
   --cacert "$WORK/ca.crt" --cert "$WORK/client.crt" --key "$WORK/client.key")
expect "put over mutual TLS" "$("${S[@]}" put tls-key tls-value)" "OK"
expect "get over mutual TLS" "$("${S[@]}" get tls-key --print-value-only)" "tls-value"
expect "the same key over http" \
  "$(etcdctl --endpoints="127.0.0.1:$PORT" --command-timeout=5s get tls-key --print-value-only)" "tls-value"
expect "endpoint health over TLS" "$("${S[@]}" endpoint health 2>&1 | grep -c 'is healthy')" "1"
expect "HTTP/1.1 /health over TLS (curl)" \
  "$(curl -sf --max-time 5 --cacert "$WORK/ca.crt" --cert "$WORK/client.crt" --key "$WORK/client.key" \
     "https://127.0.0.1:$TLS_PORT/health" | json 'd["health"]')" "true"

nocert=$(etcdctl --endpoints="https://127.0.0.1:$TLS_PORT" --command-timeout=3s --dial-timeout=2s \
  --cacert "$WORK/ca.crt" put k v 2>&1 || true)
[[ "$nocert" != "OK" ]] || fail "a client without a certificate was served"
echo "ok: a client without a certificate is refused"
untrusted=$(etcdctl --endpoints="https://127.0.0.1:$TLS_PORT" --command-timeout=3s --dial-timeout=2s \
  put k v 2>&1 || true)
[[ "$untrusted" != "OK" ]] || fail "a client that does not trust the server's CA got an answer"
echo "ok: the server's certificate is checked by etcdctl"
kill -0 "$PID" || fail "keel exited"

# Three members with TLS between them and towards clients (README's
# "TLS" section), etcdctl with --cacert --cert --key on every endpoint.
bash "$(dirname "$0")/../tools/tls-certs.sh" "$WORK/cluster" >/dev/null
C=() P=()
for i in 0 1 2; do port c; port p; C+=("https://127.0.0.1:$c"); P+=("https://127.0.0.1:$p"); done
MPIDS=()
for i in 0 1 2; do
  crt="$WORK/cluster/m$i"
  "$KEEL" --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "${C[$i]}" --advertise-client-urls "${C[$i]}" \
    --listen-peer-urls "${P[$i]}" --initial-advertise-peer-urls "${P[$i]}" \
    --initial-cluster "m0=${P[0]},m1=${P[1]},m2=${P[2]}" \
    --cert-file "$crt.crt" --key-file "$crt.key" --client-cert-auth --trusted-ca-file "$WORK/cluster/ca.crt" \
    --peer-cert-file "$crt.crt" --peer-key-file "$crt.key" --peer-client-cert-auth \
    --peer-trusted-ca-file "$WORK/cluster/ca.crt" >>"$WORK/m$i.log" 2>&1 &
  MPIDS+=($!)
done
stop_members() { for p in "${MPIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap 'stop_members; cleanup' EXIT
T=(etcdctl --command-timeout=5s --dial-timeout=3s --cacert "$WORK/cluster/ca.crt"
   --cert "$WORK/cluster/client.crt" --key "$WORK/cluster/client.key")
ALL="${C[0]},${C[1]},${C[2]}"
healthy=0
for _ in $(seq 1 100); do
  healthy=$("${T[@]}" --endpoints="$ALL" endpoint health 2>&1 | grep -c 'is healthy' || true)
  [ "$healthy" = 3 ] && break
  for p in "${MPIDS[@]}"; do kill -0 "$p" 2>/dev/null || { tail -20 "$WORK"/m*.log >&2; fail "a TLS member exited"; }; done
  sleep 0.3
done
expect "3 members healthy over TLS" "$healthy" "3"
expect "member list over TLS" "$("${T[@]}" --endpoints="${C[0]}" member list | wc -l)" "3"
expect "put through m0" "$("${T[@]}" --endpoints="${C[0]}" put tls-cluster one)" "OK"
expect "get through m2" "$("${T[@]}" --endpoints="${C[2]}" get tls-cluster --print-value-only)" "one"
status=$("${T[@]}" --endpoints="$ALL" endpoint status -w json)
expect "one leader over peer TLS" "$(echo "$status" | json 'len({s["Status"]["leader"] for s in d})')" "1"
echo "== TLS interop passed"
