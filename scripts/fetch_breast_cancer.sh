#!/usr/bin/env bash
# The Wisconsin Diagnostic Breast Cancer data (569 cases, 30 features; UCI, Street et al. 1995)
# as Debian's python3-sklearn ships it (sklearn/datasets/data/breast_cancer.csv): downloaded with
# `apt-get download` (nothing is installed) and unpacked with `dpkg -x` in a temporary folder.
#
#   scripts/fetch_breast_cancer.sh CACHE_DIR     -> CACHE_DIR/breast_cancer.csv (printed)
#
# Cached: when CACHE_DIR/breast_cancer.csv exists nothing is downloaded. The file's first line is
# "569,30,malignant,benign" (cases, features, the target names), not column names; each row is
# the 30 features and the target (0 malignant, 1 benign). The script checks that shape.
set -euo pipefail
prog=$(basename "$0")
[ $# -eq 1 ] || { echo "usage: $prog CACHE_DIR" >&2; exit 2; }
cache=$1
out="$cache/breast_cancer.csv"

check() {  # 569 rows of 31 numeric fields after the "569,30,malignant,benign" line, targets 0/1
  awk -F, 'NR == 1 { if ($0 !~ /^569,30,malignant,benign/) exit 1; next }
           NF != 31 || ($31 != "0" && $31 != "1") { exit 1 }
           { n++ } END { exit n == 569 ? 0 : 1 }' "$1"
}

if [ -f "$out" ] && check "$out"; then
  echo "$prog: cached $out" >&2
  echo "$out"
  exit 0
fi
command -v apt-get > /dev/null && command -v dpkg > /dev/null ||
  { echo "$prog: error: needs apt-get and dpkg (Debian) to fetch python3-sklearn" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's _apt user may then write there (else apt warns and downloads as root)
echo "$prog: apt-get download python3-sklearn (the data file only; nothing is installed)" >&2
if ! (cd "$tmp" && apt-get download python3-sklearn > "$tmp/apt.log" 2>&1); then
  cat "$tmp/apt.log" >&2
  echo "$prog: error: 'apt-get download python3-sklearn' failed (no network or no package lists?" \
       "try 'apt-get update'; or put breast_cancer.csv from any scikit-learn into $cache yourself)" >&2
  exit 1
fi
deb=$(ls "$tmp"/python3-sklearn_*.deb)
dpkg -x "$deb" "$tmp/x"
src=$(find "$tmp/x" -path '*/sklearn/datasets/data/breast_cancer.csv' | head -n 1)
[ -n "$src" ] || { echo "$prog: error: $(basename "$deb") holds no sklearn/datasets/data/breast_cancer.csv" >&2; exit 1; }
check "$src" || { echo "$prog: error: $src is not 569 cases of 30 features and a 0/1 target" >&2; exit 1; }
mkdir -p "$cache"
cp "$src" "$out.part"
mv "$out.part" "$out"
echo "$prog: $(basename "$deb") -> $out" >&2
echo "$out"
