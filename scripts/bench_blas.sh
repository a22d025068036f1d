#!/usr/bin/env bash
# The same training on Netlib's reference BLAS and on OpenBLAS, one after the other in one run:
# samples/s of each and their ratio (docs/performance.md). Debian's libtorch calls whatever
# libblas.so.3 it finds, so LD_LIBRARY_PATH picks the library per process; both must be
# installed (libblas3 comes with libtorch-dev, libopenblas0-openmp with scripts/install-deps.sh).
#
#   scripts/bench_blas.sh [BIN_DIR]      (default build/bin; THREADS=N for the intra-op threads)
set -euo pipefail
bin=${1:-build/bin}
triplet=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
ref=/usr/lib/$triplet/blas
openblas=/usr/lib/$triplet/openblas-openmp
for dir in "$ref" "$openblas"; do
  [ -e "$dir/libblas.so.3" ] || { echo "bench_blas: no $dir/libblas.so.3 (install libblas3 and libopenblas0-openmp)" >&2; exit 1; }
done
threads=${THREADS:-$(nproc)}

# samples/s of one fedsim command under the BLAS in directory $1
rate() {
  local dir=$1; shift
  LD_LIBRARY_PATH=$dir "$bin/fedsim" "$@" --no-progress 2>/dev/null | sed -n 's/.*samples_per_s=\([0-9.]*\).*/\1/p' | tail -1
}

run() {
  local what=$1; shift
  local r o
  r=$(rate "$ref" "$@")
  o=$(rate "$openblas" "$@")
  echo "bench_blas: $what reference=$r openblas=$o ratio=$(python3 -c "print(f'{$o / $r:.2f}')")"
}

run "central cnn, 1 epoch of 6000, $threads threads" central --model cnn --local-epochs 1 --train-limit 6000 \
  --threads "$threads"
run "fedsim cnn, 4 clients, 1 round of 1 epoch" --model cnn --clients 4 --rounds 1 --local-epochs 1 \
  --train-limit 12000 --partition dirichlet --alpha 0.5 --seed 1 --eval-every 0
