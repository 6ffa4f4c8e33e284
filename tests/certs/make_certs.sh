#!/bin/sh
# Regenerate the test certificates of tests/certs (see README.md). Run from this directory.
# EC P-256 keys (fast handshakes), SHA-256 signatures, 100 years of validity.
set -eu
DAYS=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# The CA the tests trust, and a second, unrelated one ("wrong CA").
for ca in ca other-ca; do
    key "$ca.key"
    openssl req -x509 -new -key "$ca.key" -sha256 -days "$DAYS" -subj "/O=oxloop tests/CN=oxloop test $ca" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out "$ca.pem"
done

# sign NAME CA SUBJECT EXTENSIONS: a leaf certificate NAME.pem for NAME.key, signed by CA.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$3" -out "$1.csr"
    printf '%s\n' "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -sha256 -days "$DAYS" \
        -extfile "$1.ext" -out "$1.pem"
    rm -f "$1.csr" "$1.ext"
}

sign server ca '/O=oxloop tests/CN=localhost' \
'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1'

sign client ca '/O=oxloop tests/CN=oxloop test client' \
'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'

rm -f ./*.srl
