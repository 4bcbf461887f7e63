#!/bin/sh
# Make a local CA, the certificates and the tokens Sagaflow's services need,
# with openssl, into DIR (default ./certs). Existing files are kept, so a
# second run changes nothing. For local use and compose.yaml; in production
# certificates come from your own CA (see docs/security.md).
#
#   sh tests/compose/make-certs.sh [DIR] [EXTRA_SAN...]
#
# EXTRA_SAN (e.g. DNS:my-host or IP:10.0.0.5) is added to every server
# certificate. Made in DIR:
#   ca.crt ca.key                     the CA (keep ca.key private)
#   order.crt payment.crt inventory.crt flight.crt hotel.crt car.crt trip.crt
#                          (+ .key)   participants' server certificates,
#                                     DNS:NAME, DNS:sagaflow-NAME, localhost
#   orchestrator-api.crt (+ .key)     the orchestrator's API certificate
#   orchestrator-client.crt (+ .key)  the orchestrator's client certificate,
#                                     DNS:sagaflow-orchestrator (the pinned identity)
#   api-tokens operator-tokens        one random token each
set -eu
dir=${1:-certs}
[ $# -gt 0 ] && shift
extra=""
for san in "$@"; do extra="$extra,$san"; done
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -f ca.crt ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout ca.key -out ca.crt -days 3650 -subj "/CN=sagaflow local CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# issue NAME SUBJECT_ALT_NAMES
issue() {
  [ -f "$1.crt" ] && return 0
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$1.key" -out "$1.csr" -subj "/CN=$1"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out "$1.crt" -days 825 -extfile "$1.ext"
  rm -f "$1.csr" "$1.ext"
}

for p in order payment inventory flight hotel car trip; do
  issue "$p" "DNS:$p,DNS:sagaflow-$p,DNS:localhost,IP:127.0.0.1$extra"
done
issue orchestrator-api "DNS:orchestrator,DNS:localhost,IP:127.0.0.1$extra"
issue orchestrator-client "DNS:sagaflow-orchestrator"

[ -f api-tokens ] || openssl rand -hex 32 > api-tokens
[ -f operator-tokens ] || openssl rand -hex 32 > operator-tokens
chmod 644 ./*.crt
echo "certificates and tokens in $(pwd)"
