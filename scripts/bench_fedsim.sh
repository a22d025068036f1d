#!/usr/bin/env bash
# Speed of fedsim against centralized training of the same model, batch size and device,
# measured in one run (issue #3: fedsim samples/s >= 0.85 x centralized samples/s).
#
# Baseline: `fedsim central` (one model, the same LocalTrainer) at 1 intra-op thread and at
# all cores; the faster of the two is the baseline, so the ratio is against the best
# centralized configuration this machine has. fedsim: 10 clients, Dirichlet(0.5), 2 rounds
# of 1 local epoch (the whole training set each round); its samples/s counts training time
# only (selection, local training and aggregation; not the global evaluation).
#
#   scripts/bench_fedsim.sh [build-dir] [model] [device]      -> prints a table + ratio
set -euo pipefail
build=${1:-build}
model=${2:-lenet5}
device=${3:-auto}
bin="$build/bin/fedsim"
cores=$(nproc)
common="--model $model --batch-size 64 --lr 0.01 --momentum 0.9 --seed 1 --device $device --log-level warn"
best=0
sps() { sed -n 's/.*samples_per_s=\([0-9]*\).*/\1/p'; }
echo "| configuration | samples/s |"
echo "|---|---|"
for t in 1 "$cores"; do
  v=$("$bin" central $common --local-epochs 1 --threads "$t" | sps)
  echo "| central, $t thread(s) | $v |"
  [ "$v" -gt "$best" ] && best=$v
done
fed=$("$bin" $common --partition dirichlet --alpha 0.5 --clients 10 --rounds 2 --local-epochs 1 \
      --eval-every 0 --no-progress | sps)
echo "| fedsim, 10 clients, $( [ "$device" = cpu ] || [ "$device" = auto ] && echo "$cores workers x 1 thread" || echo "$device") | $fed |"
ratio=$(awk -v a="$fed" -v b="$best" 'BEGIN { printf "%.2f", a / b }')
echo
echo "bench_fedsim: model=$model central_best=$best fedsim=$fed ratio=$ratio (goal >= 0.85)"
