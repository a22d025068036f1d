#!/usr/bin/env bash
# Scaling of a distributed fedsim on this machine (docs/distributed.md), all measured in one run:
#  1. samples/s of one process with 1 worker (the baseline), one process with 2 workers, and
#     2 ranks of 1 worker each on loopback, with their ratios to the baseline;
#  2. a model-size sweep (mlp, one hidden layer of H units, little local work per round): samples/s
#     of 2 ranks against one process with 2 workers, and rank 0's time in the exchanges
#     (all-gather of the results, waiting for the other rank included) against its training time,
#     to show where the communication starts to dominate; FedAvg's sums all-reduced (the default,
#     --dist-reduce allreduce) against every result gathered (--dist-reduce gather);
#  3. a local-work sweep at H = 1024 (STEPS local steps of 32 per round): the same, as the
#     training per exchanged byte grows;
#  4. a clients sweep at H = 1024 (CLIENTS clients, all in every round): gathering ships one model
#     per client, the all-reduce one sum per rank.
# Each configuration runs REPEAT times (default 3); the median samples/s is reported, and rank 0's
# time split of the last of those runs.
#
#   scripts/bench_distributed.sh [BIN_DIR]     (default build/bin; HIDDEN="64 1024 ...", STEPS="1 5 ...", CLIENTS="8 32 ..." for the sweeps)
set -euo pipefail
bin=${1:-build/bin}
repeat=${REPEAT:-3}
hidden=${HIDDEN:-"64 256 1024 4096 8192"}
steps=${STEPS:-"1 5 20 80"}
clients=${CLIENTS:-"8 32 64"}
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
  sed -n 's/.*rank 0 of 2: training \([0-9.]*\) s, exchanges \([0-9.]*\) s (encode \([0-9.]*\), all-gather \([0-9.]*\), decode \([0-9.]*\)), \([0-9.]*\) MB of results sent; all-reduce \([0-9.]*\) s, \([0-9.]*\) MB of sums (summing \([0-9.]*\) s).*/\1 \2 \3 \4 \5 \6 \7 \8 \9/p' \
    "$out/r0.log" > "$out/stats"
  [ -s "$out/stats" ] || { echo "bench_distributed: no exchange statistics in rank 0's log" >&2; cat "$out/r0.log" >&2; exit 1; }
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
r2=$(med ranks $base --workers 1 --dist-reduce gather)
read -r train exch enc gat dec mb _ _ _ < "$out/stats"
echo "bench_distributed: lenet5, 8 clients x 1000 examples, 3 rounds of 1 epoch"
echo "  1 process, 1 worker : $w1 samples/s (baseline)"
echo "  1 process, 2 workers: $w2 samples/s ($(ratio "$w2" "$w1")x)"
echo "  2 ranks, 1 worker   : $r2 samples/s (results gathered: $(ratio "$r2" "$w1")x; rank 0: training ${train} s, exchanges ${exch} s, ${mb} MB sent)"
echo "  (rank 0's exchanges: encode ${enc} s, all-gather ${gat} s including waiting for rank 1, decode ${dec} s)"

header() {
  printf '  %6s %9s %12s | %10s %6s %8s %8s %7s | %10s %6s %8s %8s %8s %7s\n' "$1" params "2 workers/s" "gather/s" \
    ratio "train s" "exch s" "MB" "allred/s" ratio "train s" "exch s" "sum s" "MB"
}

# One row: 2 workers against 2 ranks gathering the results and 2 ranks all-reducing FedAvg's sums,
# for mlp 784-$2-10 with $3 local steps and $4 clients (all of them every round); $1 is the row's
# label. exch s: rank 0's all-gather (and, all-reducing, all-reduce) seconds, waits included; sum s:
# of those, the fixed-point arithmetic; MB: what rank 0 sent or put into the all-reduces.
row() {
  local args="--model mlp --hidden $2 --partition iid --clients $4 --rounds 3 --local-steps $3 --batch-size 32 \
    --train-limit ${5:-8000} --eval-every 0 --seed 1"
  local a b c train exch enc gat dec mb red smb sums gtrain gexch gmb
  # shellcheck disable=SC2086
  a=$(med single $args --workers 2)
  # shellcheck disable=SC2086
  b=$(med ranks $args --workers 1 --dist-reduce gather)
  read -r gtrain gexch enc gat dec gmb red smb sums < "$out/stats"
  # shellcheck disable=SC2086
  c=$(med ranks $args --workers 1 --dist-reduce allreduce)
  read -r train exch enc gat dec mb red smb sums < "$out/stats"
  printf '  %6s %9s %12s | %10s %6s %8s %8s %7s | %10s %6s %8s %8s %8s %7s\n' "$1" $((784 * $2 + $2 + $2 * 10 + 10)) \
    "$a" "$b" "$(ratio "$b" "$a")" "$gtrain" "$gexch" "$gmb" "$c" "$(ratio "$c" "$a")" "$train" \
    "$(python3 -c "print(f'{$exch + $red:.3f}')")" "$sums" "$(python3 -c "print(f'{$mb + $smb:.1f}')")"
}

echo "bench_distributed: model-size sweep, mlp 784-H-10, 8 clients, 3 rounds of 5 steps of 32 (1 worker per rank)"
header H
for h in $hidden; do row "$h" "$h" 5 8; done
echo "bench_distributed: local-work sweep, mlp 784-1024-10, 8 clients, 3 rounds of S steps of 32"
header S
for st in $steps; do row "$st" 1024 "$st" 8; done
echo "bench_distributed: clients sweep, mlp 784-1024-10, C clients (all every round), 3 rounds of 5 steps of 32"
header C
for cl in $clients; do row "$cl" 1024 5 "$cl" 16000; done
