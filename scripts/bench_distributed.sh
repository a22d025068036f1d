#!/usr/bin/env bash
# Scaling of a distributed fedsim on this machine (docs/distributed.md), all measured in one run:
#  1. samples/s of one process with 1 worker (the baseline), one process with 2 workers, and
#     2 ranks of 1 worker each on loopback, with their ratios to the baseline;
#  2. a model-size sweep (mlp, one hidden layer of H units, little local work per round): samples/s
#     of 2 ranks against one process with 2 workers, and rank 0's time in the exchanges
#     (all-gather of the results, waiting for the other rank included) against its training time,
#     to show where the communication starts to dominate.
# Each configuration runs REPEAT times (default 3); the median samples/s is reported.
#
#   scripts/bench_distributed.sh [BIN_DIR]     (default build/bin; HIDDEN="64 1024 ..." for the sweep)
set -euo pipefail
bin=${1:-build/bin}
repeat=${REPEAT:-3}
hidden=${HIDDEN:-"64 256 1024 4096 8192"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fedsim=$bin/fedsim
[ -x "$fedsim" ] || { echo "bench_distributed: no $fedsim (build it first)" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sps() { sed -n 's/.*samples_per_s=\([0-9.]*\).*/\1/p' "$1" | tail -1; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

# One process: its samples/s.
single() {
  "$fedsim" "$@" --no-progress > "$out/single.log" 2>&1 || { cat "$out/single.log" >&2; exit 1; }
  sps "$out/single.log"
}

# Two ranks on loopback: rank 0's samples/s (the whole run's), and rank 0's exchange and training
# seconds and MB sent in $out/stats.
ranks() {
  local p; p=$(port)
  "$fedsim" "$@" --no-progress --world-size 2 --rank 1 --master-addr 127.0.0.1 --master-port "$p" > "$out/r1.log" 2>&1 &
  local pid=$!
  "$fedsim" "$@" --no-progress --world-size 2 --rank 0 --master-addr 127.0.0.1 --master-port "$p" > "$out/r0.log" 2>&1 \
    || { cat "$out/r0.log" >&2; exit 1; }
  wait "$pid" || { cat "$out/r1.log" >&2; exit 1; }
  sed -n 's/.*rank 0 of 2: training \([0-9.]*\) s, exchanges \([0-9.]*\) s, \([0-9.]*\) MB.*/\1 \2 \3/p' "$out/r0.log" \
    > "$out/stats"
  sps "$out/r0.log"
}

med() {  # median samples/s of REPEAT runs of "$@"
  local all=""
  for _ in $(seq "$repeat"); do all="$all $("$@")"; done
  echo "$all" | median
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

echo "bench_distributed: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), median of $repeat runs"
base="--model lenet5 --partition iid --clients 8 --rounds 3 --local-epochs 1 --batch-size 32 --train-limit 8000 \
  --eval-every 0 --seed 1"
# shellcheck disable=SC2086
w1=$(med single $base --workers 1)
# shellcheck disable=SC2086
w2=$(med single $base --workers 2)
# shellcheck disable=SC2086
r2=$(med ranks $base --workers 1)
read -r train exch mb < "$out/stats"
echo "bench_distributed: lenet5, 8 clients x 1000 examples, 3 rounds of 1 epoch"
echo "  1 process, 1 worker : $w1 samples/s (baseline)"
echo "  1 process, 2 workers: $w2 samples/s ($(ratio "$w2" "$w1")x)"
echo "  2 ranks, 1 worker   : $r2 samples/s ($(ratio "$r2" "$w1")x; rank 0: training ${train} s, exchanges ${exch} s, ${mb} MB sent)"

echo "bench_distributed: model-size sweep, mlp 784-H-10, 8 clients, 3 rounds of 5 steps of 32 (1 worker per rank)"
printf '  %8s %10s %14s %12s %8s %10s %10s %8s\n' H params "2 workers/s" "2 ranks/s" ratio "train s" "exch s" "MB"
for h in $hidden; do
  args="--model mlp --hidden $h --partition iid --clients 8 --rounds 3 --local-steps 5 --batch-size 32 --train-limit 8000 \
    --eval-every 0 --seed 1"
  # shellcheck disable=SC2086
  a=$(med single $args --workers 2)
  # shellcheck disable=SC2086
  b=$(med ranks $args --workers 1)
  read -r train exch mb < "$out/stats"
  params=$((784 * h + h + h * 10 + 10))
  printf '  %8s %10s %14s %12s %8s %10s %10s %8s\n' "$h" "$params" "$a" "$b" "$(ratio "$b" "$a")" "$train" "$exch" "$mb"
done
