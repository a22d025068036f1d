#!/usr/bin/env bash
# Issue 7: FedCMD on Fashion-MNIST, lenet5, 100 clients, fraction 0.1, per-client test split 0.5,
# 200 rounds, 5 local epochs, batch 32, SGD lr 0.01 (the paper's protocol), for Dirichlet(0.1)
# and Dirichlet(0.5), with the data conventions of the paper's code (FL-bench): the train and
# test files partitioned together, at least 40 examples per client. Output:
# out/fedcmd/a01.{json,csv,svg} and a05.*; extra arguments go to fedsim (e.g.
# --fedcmd-distance mean). ALPHAS="0.1" runs one of them; SEED, ROUNDS, OUT_DIR as named.
set -euo pipefail
build=${BUILD_DIR:-build}
out=${OUT_DIR:-out/fedcmd}
mkdir -p "$out"
for alpha in ${ALPHAS:-0.1 0.5}; do
  name=a$(echo "$alpha" | tr -d .)
  nice -n 19 "$build/bin/fedsim" --model lenet5 --partition dirichlet --alpha "$alpha" --clients 100 \
    --fraction 0.1 --client-test-fraction 0.5 --rounds ${ROUNDS:-200} --local-epochs 5 --batch-size 32 \
    --lr 0.01 --seed ${SEED:-1} --strategy fedcmd --eval-every 10 --no-progress \
    --partition-pool train+test --min-samples 40 --report "$out/$name.json" "$@"
done
