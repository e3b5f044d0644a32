#!/usr/bin/env bash
# Makes a CA and the certificates a local TLS cluster needs, with openssl,
# into DIR: ca.crt/ca.key, one certificate per member (m0 m1 m2 by default,
# for 127.0.0.1 and localhost, usable as server, peer and client
# certificate, CN the member's name) and client.crt/client.key (CN
# "client"; give it another name with CLIENT_CN=...).
#
# Usage: tools/tls-certs.sh DIR [member-name...]
set -euo pipefail
DIR=$1; shift
MEMBERS=("$@"); [ ${#MEMBERS[@]} -gt 0 ] || MEMBERS=(m0 m1 m2)
mkdir -p "$DIR"
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
  -days 30 -subj "/CN=keel local CA" 2>/dev/null
# sign FILE CN
sign() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/CN=$2" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 30 \
    -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
  chmod 600 "$1.key"
}
for m in "${MEMBERS[@]}"; do sign "$m" "$m"; done
sign client "${CLIENT_CN:-client}"
chmod 600 ca.key
