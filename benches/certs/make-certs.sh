#!/usr/bin/env bash
# Regenerates the benchmark certificates of this folder (see README.md) with the openssl CLI.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Valid from 2000 to 2100, whatever the clock of the machine that made them says.
start=20000101000000Z
end=21000101000000Z

mkdir "$tmp/db"
touch "$tmp/db/index.txt"
cat > "$tmp/ca.cnf" <<CNF
[ ca ]
default_ca = bench_ca
[ bench_ca ]
dir = $tmp/db
database = \$dir/index.txt
new_certs_dir = \$dir
rand_serial = yes
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
organizationName = optional
commonName = supplied
[ ca_ext ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
ca() { openssl ca -batch -notext -config "$tmp/ca.cnf" -startdate "$start" -enddate "$end" "$@" 2>/dev/null; }

# The test CA: ECDSA P-256, self-signed. Its key is thrown away.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -new -key "$tmp/ca.key" -subj '/O=oxloop benchmarks/CN=oxloop benchmark CA' -out "$tmp/ca.csr"
ca -selfsign -keyfile "$tmp/ca.key" -extensions ca_ext -in "$tmp/ca.csr" -out ca.pem

# The server: ECDSA P-256, for localhost, 127.0.0.1 and ::1, signed by the CA.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj '/O=oxloop benchmarks/CN=localhost' -out "$tmp/server.csr"
ca -cert ca.pem -keyfile "$tmp/ca.key" -extensions server_ext -in "$tmp/server.csr" -out server.pem

openssl verify -CAfile ca.pem server.pem
