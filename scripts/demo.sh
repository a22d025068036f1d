#!/usr/bin/env bash
# The main job on this machine: a short centralized training run (the baseline), then a
# federated simulation of 10 hospitals on a Dirichlet(0.5) split of Fashion-MNIST.
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${DEMO_OUT:-out/demo}
mkdir -p "$out"
echo "== centralized baseline: lenet5, 1 epoch on 10,000 Fashion-MNIST images"
"$bin/fedsim" central --model lenet5 --train-limit 10000 --local-epochs 1 --batch-size 32 \
  --lr 0.01 --momentum 0.9 --seed 1 --report "$out/central.json"
echo "== fedsim: FedAvg, 10 clients, Dirichlet(0.5), 5 rounds"
"$bin/fedsim" --model lenet5 --partition dirichlet --alpha 0.5 --clients 10 --rounds 5 \
  --local-epochs 1 --batch-size 64 --lr 0.01 --momentum 0.9 --seed 1 \
  --report "$out/fedsim.json"
echo "demo: reports in $out (JSON, CSV and an SVG accuracy plot)"
