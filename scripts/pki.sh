#!/usr/bin/env bash
# Development PKI for the federation: a thin wrapper over `fedctl pki` (OpenSSL, EC P-256) that
# makes the demo's set of identities, each carrying its role both as OU and as the SAN URI
# fl-role:<role>, plus the CA's CRL (crl.pem, for fedcoord --tls-crl).
#
#   scripts/pki.sh DIR [--coordinator-host NAME]... [--client NAME]... [--admin NAME]...
#                      [--export-to ROOT [--owner UID]]
#
# With only DIR: coordinator "coordinator", clients hospital-1..3, admin "admin".
# Idempotent: an existing CA is reused and existing certificates are kept. Not for production.
# --export-to ROOT: for every identity with a directory ROOT/<name> (a container's own volume),
# copies there only what that identity needs: ca.crt, <name>.crt, <name>.key (0600) and, for
# the coordinator, crl.pem; never the CA key nor anyone else's key. Re-run after a revocation
# to refresh the coordinator's crl.pem.
set -euo pipefail

prog=$(basename "$0")

usage() {
  cat >&2 <<EOF
usage: $prog DIR [--coordinator-host NAME]... [--client NAME]... [--admin NAME]...
                 [--export-to ROOT [--owner UID]]

Creates DIR/ca.key + DIR/ca.crt (EC P-256, self-signed CA), DIR/crl.pem and, for each identity,
DIR/<name>.key + DIR/<name>.crt signed by that CA (CN=<name>, OU=<role>, SAN URI fl-role:<role>).
The coordinator certificate (CN=coordinator) also names DNS:localhost, IP:127.0.0.1 and every
--coordinator-host NAME (a DNS name or an IP address).
With no --client/--admin the defaults are clients hospital-1..3 and admin "admin".
Existing files are kept, so the script can be re-run to add identities.
--export-to ROOT copies, for each identity NAME that has a directory ROOT/NAME, only ca.crt,
NAME.crt and NAME.key (mode 0600) into it (the coordinator also gets crl.pem), owned by --owner
UID when given. The CA key never leaves DIR.
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
export_root=
owner=
while [ $# -gt 0 ]; do
  opt=$1
  case "$opt" in
    --coordinator-host|--client|--admin|--export-to|--owner)
      [ $# -ge 2 ] || die "$opt needs a NAME"
      val=$2
      shift 2
      ;;
    --coordinator-host=*|--client=*|--admin=*|--export-to=*|--owner=*)
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
    --export-to)
      [ -d "$val" ] || die "--export-to '$val' is not a directory"
      export_root=$val
      ;;
    --owner)
      [[ "$val" =~ ^[0-9]+$ ]] || die "--owner must be a numeric uid, got '$val'"
      owner=$val
      ;;
  esac
done
[ -z "$owner" ] || [ -n "$export_root" ] || die "--owner needs --export-to"
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

# fedctl: $FEDCTL, else this checkout's build, else PATH (the Docker image).
fedctl=${FEDCTL:-}
if [ -z "$fedctl" ]; then
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [ -x "$here/build/bin/fedctl" ]; then fedctl=$here/build/bin/fedctl
  else fedctl=$(command -v fedctl) || die "fedctl not found: build it (make build) or set FEDCTL"
  fi
fi
mkdir -p "$dir" || die "cannot create directory '$dir'"
[ -w "$dir" ] || die "directory '$dir' is not writable"

if [ -f "$dir/ca.key" ] && [ -f "$dir/ca.crt" ]; then
  echo "$prog: reusing CA $dir/ca.crt"
elif [ -f "$dir/ca.key" ] || [ -f "$dir/ca.crt" ]; then
  die "$dir has only one of ca.key / ca.crt; remove it or restore the other"
else
  "$fedctl" pki init --dir "$dir"
fi

# issue NAME ROLE [--host H]...: keeps an existing certificate (re-runs add identities only).
issue() {
  local name=$1 role=$2
  shift 2
  if [ -f "$dir/$name.crt" ] && [ -f "$dir/$name.key" ]; then
    echo "$prog: keeping $dir/$name.crt"
    return
  fi
  "$fedctl" pki issue --dir "$dir" --role "$role" --name "$name" "$@"
}

host_args=()
for h in "${coord_hosts[@]}"; do host_args+=(--host "$h"); done
issue coordinator coordinator "${host_args[@]}"
for n in "${clients[@]}"; do issue "$n" client; done
for n in "${admins[@]}"; do issue "$n" admin; done

echo "$prog: PKI ready in $dir"

# put SRC DEST MODE: a copy that appears whole (same directory, then rename), with its owner.
put() {
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  [ -z "$owner" ] || chown "$owner:$owner" "$tmp"
  mv -f "$tmp" "$2"
}

if [ -n "$export_root" ]; then
  for n in coordinator "${clients[@]}" "${admins[@]}"; do
    out=$export_root/$n
    [ -d "$out" ] || continue
    put "$dir/ca.crt" "$out/ca.crt" 0644
    put "$dir/$n.crt" "$out/$n.crt" 0644
    put "$dir/$n.key" "$out/$n.key" 0600
    [ "$n" != coordinator ] || put "$dir/crl.pem" "$out/crl.pem" 0644
    echo "$prog: exported $n's certificate and key to $out"
  done
fi
