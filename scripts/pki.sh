#!/usr/bin/env bash
# Development PKI for the federation (openssl CLI only): one EC P-256 CA and one certificate
# per identity, each carrying its role both as OU and as the SAN URI fl-role:<role>.
#
#   scripts/pki.sh DIR [--coordinator-host NAME]... [--client NAME]... [--admin NAME]...
#
# With only DIR: coordinator "coordinator", clients hospital-1..3, admin "admin".
# Idempotent: an existing CA is reused and existing certificates are kept. Not for production.
set -euo pipefail

prog=$(basename "$0")
DAYS=825

usage() {
  cat >&2 <<EOF
usage: $prog DIR [--coordinator-host NAME]... [--client NAME]... [--admin NAME]...

Creates DIR/ca.key + DIR/ca.crt (EC P-256, self-signed CA, $DAYS days) and, for each identity,
DIR/<name>.key + DIR/<name>.crt signed by that CA (CN=<name>, OU=<role>, SAN URI fl-role:<role>).
The coordinator certificate (CN=coordinator) also names DNS:localhost, IP:127.0.0.1 and every
--coordinator-host NAME (a DNS name or an IP address).
With no --client/--admin the defaults are clients hospital-1..3 and admin "admin".
Existing files are kept, so the script can be re-run to add identities.
EOF
}

die() { echo "$prog: error: $*" >&2; exit 2; }

valid_name() {
  # Names become file names and certificate CNs: keep them simple.
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]
}

if [ $# -lt 1 ]; then usage; exit 2; fi
case "$1" in
  -h|--help) usage; exit 0 ;;
  -*) usage; die "the first argument must be the output directory, got '$1'" ;;
esac
dir=$1
shift

coord_hosts=()
clients=()
admins=()
explicit=0
while [ $# -gt 0 ]; do
  opt=$1
  case "$opt" in
    --coordinator-host|--client|--admin)
      [ $# -ge 2 ] || die "$opt needs a NAME"
      val=$2
      shift 2
      ;;
    --coordinator-host=*|--client=*|--admin=*)
      val=${opt#*=}
      opt=${opt%%=*}
      shift
      ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument '$opt'" ;;
  esac
  [ -n "$val" ] || die "$opt needs a non-empty NAME"
  case "$opt" in
    --coordinator-host)
      [[ "$val" =~ ^[A-Za-z0-9.:-]+$ ]] || die "invalid --coordinator-host '$val'"
      coord_hosts+=("$val")
      ;;
    --client)
      valid_name "$val" || die "invalid --client name '$val' (letters, digits, . _ -)"
      clients+=("$val"); explicit=1
      ;;
    --admin)
      valid_name "$val" || die "invalid --admin name '$val' (letters, digits, . _ -)"
      admins+=("$val"); explicit=1
      ;;
  esac
done
if [ "$explicit" -eq 0 ]; then
  clients=(hospital-1 hospital-2 hospital-3)
  admins=(admin)
fi
declare -A seen=()
for n in "${clients[@]}" "${admins[@]}"; do
  [ "$n" != coordinator ] || die "'coordinator' is reserved for the coordinator certificate"
  [ "$n" != ca ] || die "'ca' is reserved for the CA files"
  [ -z "${seen[$n]:-}" ] || die "identity '$n' is given more than once"
  seen[$n]=1
done

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"
mkdir -p "$dir" || die "cannot create directory '$dir'"
[ -w "$dir" ] || die "directory '$dir' is not writable"

umask 077
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pki.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ---- CA ---------------------------------------------------------------------------------
if [ -f "$dir/ca.key" ] && [ -f "$dir/ca.crt" ]; then
  openssl x509 -in "$dir/ca.crt" -noout 2>/dev/null || die "existing $dir/ca.crt is not a certificate"
  echo "$prog: reusing CA $dir/ca.crt"
elif [ -f "$dir/ca.key" ] || [ -f "$dir/ca.crt" ]; then
  die "$dir has only one of ca.key / ca.crt; remove it or restore the other"
else
  cat >"$tmp/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = federated-dev
CN = federated-dev-ca-$(openssl rand -hex 4)
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key" 2>/dev/null
  openssl req -new -x509 -config "$tmp/ca.cnf" -key "$tmp/ca.key" -sha256 -days "$DAYS" \
    -out "$tmp/ca.crt"
  mv "$tmp/ca.key" "$dir/ca.key"
  mv "$tmp/ca.crt" "$dir/ca.crt"
  echo "$prog: created CA $dir/ca.crt"
fi
chmod 600 "$dir/ca.key"
chmod 644 "$dir/ca.crt"

# ---- leaf certificates ------------------------------------------------------------------
# issue NAME ROLE EKU SAN
issue() {
  local name=$1 role=$2 eku=$3 san=$4
  local key="$dir/$name.key" crt="$dir/$name.crt"
  if [ -f "$key" ] && [ -f "$crt" ]; then
    chmod 600 "$key"
    echo "$prog: keeping $crt"
    local have
    have=$(openssl x509 -in "$crt" -noout -ext subjectAltName 2>/dev/null || true)
    case "$have" in
      *"fl-role:$role"*) ;;
      *) echo "$prog: warning: existing $crt does not carry role '$role'" >&2 ;;
    esac
    local want
    IFS=',' read -r -a want <<<"$san"
    for w in "${want[@]}"; do
      w=${w# }
      w=${w#*:}
      [[ "$have" == *"$w"* ]] ||
        echo "$prog: warning: existing $crt lacks SAN '$w'; delete it and re-run to reissue" >&2
    done
    return
  fi
  if [ ! -f "$key" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/$name.key" 2>/dev/null
    mv "$tmp/$name.key" "$key"
  fi
  chmod 600 "$key"
  cat >"$tmp/$name.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = federated-dev
OU = $role
CN = $name
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $eku
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = $san
EOF
  openssl req -new -config "$tmp/$name.cnf" -key "$key" -out "$tmp/$name.csr"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$DAYS" \
    -extfile "$tmp/$name.cnf" -extensions ext -out "$tmp/$name.crt" 2>/dev/null
  mv "$tmp/$name.crt" "$crt"
  chmod 644 "$crt"
  echo "$prog: issued $crt ($role)"
}

coord_san="URI:fl-role:coordinator, DNS:localhost, IP:127.0.0.1"
for h in "${coord_hosts[@]}"; do
  if [[ "$h" =~ ^[0-9]+(\.[0-9]+){3}$ ]] || [[ "$h" == *:* ]]; then
    coord_san+=", IP:$h"
  else
    coord_san+=", DNS:$h"
  fi
done
issue coordinator coordinator "serverAuth, clientAuth" "$coord_san"
for n in "${clients[@]}"; do issue "$n" client clientAuth "URI:fl-role:client"; done
for n in "${admins[@]}"; do issue "$n" admin clientAuth "URI:fl-role:admin"; done

echo "$prog: PKI ready in $dir"
