#!/usr/bin/env bash
# Secure aggregation's cost in fedsim (issue 21): one round of 100 clients, each training one
# step of a 1.0M-parameter MLP (784-1262-10), with plain FedAvg, with SecAgg+ (sparse graph,
# 2 ceil(log2 100) = 14 neighbours) and with SecAgg (complete graph), alternating, REPS times
# each in one run. Prints the fastest round wall time of each and the ratios to plain FedAvg
# (docs/performance.md). Training is one step so that the protocol's cost shows; the final
# accuracy of the three must agree (secure aggregation changes no number beyond fixed point).
#
#   scripts/bench_secagg.sh [BIN_DIR]      (default build/bin; REPS=2)
set -euo pipefail
bin=${1:-build/bin}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# wall_s of the round and the global accuracy
measure() {
  local mode=$1
  "$bin/fedsim" --model mlp --hidden 1262 --clients 100 --partition iid --train-limit 6400 --rounds 1 \
    --local-steps 1 --batch-size 32 --seed 1 --secagg "$mode" --no-progress --report "$out/$mode.json" >/dev/null 2>&1
  python3 -c "import json; r = json.load(open('$out/$mode.json'))['rounds'][0]; print(r['wall_s'], r['global_accuracy'])"
}

reps=${REPS:-2}
declare -A best acc
for _ in $(seq "$reps"); do
  for mode in none secagg+ secagg; do
    read -r t a < <(measure "$mode")
    acc[$mode]=$a
    if [[ -z "${best[$mode]:-}" ]] || python3 -c "import sys; sys.exit(0 if $t < ${best[$mode]} else 1)"; then best[$mode]=$t; fi
  done
done
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "bench_secagg: 100 clients x 1.0M parameters, 1 round, fastest of $reps:" \
  "fedavg ${best[none]} s, secagg+ ${best[secagg+]} s ($(ratio "${best[secagg+]}" "${best[none]}")x)," \
  "secagg ${best[secagg]} s ($(ratio "${best[secagg]}" "${best[none]}")x);" \
  "accuracy ${acc[none]} / ${acc[secagg+]} / ${acc[secagg]}"
