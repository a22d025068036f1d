#!/usr/bin/env bash
# Issue #3 faithfulness run: FedAvg, Fashion-MNIST, lenet5, 10 clients all participating,
# Dirichlet(0.5), 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 momentum 0.9
# (NIID-Bench's setting; Flower's reproduction reports 88.09%). Output: out/results/fedavg_niid.*
set -euo pipefail
build=${BUILD_DIR:-build}
out=${OUT_DIR:-out/results}
mkdir -p "$out"
"$build/bin/fedsim" --model lenet5 --partition dirichlet --alpha 0.5 --clients 10 --fraction 1 \
  --rounds 50 --local-epochs 10 --batch-size 64 --lr 0.01 --momentum 0.9 --seed ${SEED:-1} \
  --eval-every 1 --report "$out/fedavg_niid.json" "$@"
