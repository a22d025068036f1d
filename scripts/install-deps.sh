#!/usr/bin/env bash
# Installs the Debian 12 packages the project builds and runs with, skipping what is present.
#   scripts/install-deps.sh [--fuzz]
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git
      libtorch-dev libgloo-dev libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
      libssl-dev openssl libboost-dev librocksdb-dev libspdlog-dev libgtest-dev libgmock-dev
      libbenchmark-dev libcli11-dev libyaml-cpp-dev nlohmann-json3-dev zlib1g-dev libdcmtk-dev
      dataset-fashion-mnist python3 python3-torch
      libopenblas0-openmp)  # libtorch calls whatever libblas.so.3 is installed: OpenBLAS trains ~2.8x faster than the reference BLAS
# --fuzz: also clang and its libFuzzer runtime (make fuzz).
if [ "${1:-}" = "--fuzz" ]; then pkgs+=(clang-14 libclang-rt-14-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "install-deps: not root and no password-less sudo. Run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${#missing[@]} packages"
