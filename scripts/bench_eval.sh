#!/usr/bin/env bash
# The global model's evaluation on the CPU at the old batch (1024) and at the CPU default (64),
# alternating, REPS times each in one run: the fastest seconds of each for the 10,000
# Fashion-MNIST test images and their ratio (docs/performance.md). The fastest of several is the
# figure least disturbed by whatever else the machine runs. The accuracy must come out the same:
# only the batching differs.
#
#   scripts/bench_eval.sh [BIN_DIR] [MODEL]      (default build/bin, cnn)
set -euo pipefail
bin=${1:-build/bin}
model=${2:-cnn}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# eval_s and global_accuracy of one round whose training is a single step
measure() {
  local batch=$1
  "$bin/fedsim" --model "$model" --clients 2 --rounds 1 --local-steps 1 --seed 1 --eval-batch "$batch" \
    --no-progress --report "$out/b$batch.json" >/dev/null 2>&1
  python3 -c "import json; r = json.load(open('$out/b$batch.json'))['rounds'][0]; print(r['eval_s'], r['global_accuracy'])"
}

reps=${REPS:-3}
olds=() news=()
for _ in $(seq "$reps"); do
  read -r t acc_old < <(measure 1024); olds+=("$t")
  read -r t acc_new < <(measure 64); news+=("$t")
done
min() { python3 -c "import sys; print(f'{min(map(float, sys.argv[1:])):.2f}')" "$@"; }
old=$(min "${olds[@]}") new=$(min "${news[@]}")
echo "bench_eval: $model, 10000 test images, fastest of $reps: batch 1024 ${old} s, batch 64 ${new} s," \
  "ratio $(python3 -c "print(f'{$old / $new:.2f}')") (accuracy $acc_old vs $acc_new; all: ${olds[*]} / ${news[*]})"
