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

# A CA, and a certificate it signs for 127.0.0.1: NAME CN
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
  -days 2 -subj "/CN=keel CI CA" 2>/dev/null
sign() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 \
    -extfile "$1.ext" 2>/dev/null
}
sign server server
sign client client
cd - >/dev/null

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
echo "== TLS interop passed"
