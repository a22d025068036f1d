#!/usr/bin/env bash
# A compute-bound deployment against its compute floor (issue 20), in one run:
#   1. `fedsim central`: the cnn's training samples/s on this machine (batch 32, the faster of 1 and
#      every core's threads) and
#      the time of one evaluation of the test set;
#   2. fedcoord + 4 fedclients over mutual TLS on loopback: cnn, Dirichlet(0.5), ROUNDS rounds of
#      one local epoch, batch 32, the global model evaluated on the test set every round.
# floor = samples the clients trained / central's samples/s + ROUNDS evaluations. The deployment's
# time is the sum of its rounds (training, aggregation, evaluation) and commits, from the
# coordinator's log: start-up (loading data, registering) is not a round's.
# The four clients share this machine: one intra-op thread each (CLIENT_THREADS).
# Usage: scripts/bench_deploy.sh [build-dir]   (ROUNDS=3 TRAIN_LIMIT=60000 CLIENT_THREADS=1 BENCH_OUT=out/bench_deploy)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${BENCH_OUT:-out/bench_deploy}
rounds=${ROUNDS:-3}
limit=${TRAIN_LIMIT:-60000}
port=${BENCH_PORT:-50072}
threads=$(nproc)
rm -rf "$out"
mkdir -p "$out"

# With 1 and with every core's threads: the faster is the baseline (OpenMP threads spin against
# other processes on a loaded machine, so more threads are not always faster).
for t in 1 "$threads"; do
  "$bin/fedsim" central --model cnn --local-epochs 1 --batch-size 32 --lr 0.05 --momentum 0.9 --train-limit "$limit" \
    --threads "$t" --no-progress --report "$out/central-$t.json" > "$out/central-$t.log" 2>&1
done

scripts/pki.sh "$out/pki" --client hospital-1 --client hospital-2 --client hospital-3 --client hospital-4 > "$out/pki.log"
"$bin/fedsim" partition --partition dirichlet --alpha 0.5 --clients 4 --seed 1 --train-limit "$limit" \
  --save-partition "$out/partition.json" > "$out/partition.log"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
"$bin/fedcoord" --listen "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
  --tls-cert "$out/pki/coordinator.crt" --tls-key "$out/pki/coordinator.key" \
  --data-dir "$out/db" --run-id bench --strategy fedavg --model cnn --rounds "$rounds" --min-clients 4 \
  --client-names hospital-1,hospital-2,hospital-3,hospital-4 --local-epochs 1 --batch-size 32 --lr 0.05 \
  --momentum 0.9 --seed 1 --eval-every 1 --finish-grace-s 3 --log-level debug > "$out/fedcoord.log" 2>&1 &
pids+=("$!")
for i in 1 2 3 4; do
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$i.crt" --tls-key "$out/pki/hospital-$i.key" \
    --partition-file "$out/partition.json" --client-index $((i - 1)) --train-limit "$limit" \
    --state-dir "$out/hospital-$i" --threads "${CLIENT_THREADS:-1}" > "$out/hospital-$i.log" 2>&1 &
  pids+=("$!")
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
trap - EXIT INT TERM
[ "$status" -eq 0 ] || { echo "bench_deploy: a process failed (exit $status); logs in $out" >&2; exit 1; }

python3 - "$out" "$rounds" "$threads" <<'EOF'
import json, re, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = [json.load(open(f"{out}/central-{t}.json")) for t in ("1", threads)]
central = max(runs, key=lambda r: r["samples_per_s"])
coord = open(f"{out}/fedcoord.log").read()
walls = [float(s) for s in re.findall(r"round \d+/\d+: clients .*\(([\d.]+)s\)", coord)]
timing = re.findall(r"round (\d+): (\d+) samples, [\d.]+ s to aggregate, ([\d.]+) s to evaluate, ([\d.]+) s to commit", coord)
samples = sum(int(t[1]) for t in timing)
evals = sum(float(t[2]) for t in timing)
commits = sum(float(t[3]) for t in timing)
deployed = sum(walls) + commits
train_floor = samples / central["samples_per_s"]
eval_floor = rounds * central["eval_s"]
floor = train_floor + eval_floor
acc = re.findall(r"global_accuracy ([\d.]+)", coord)
print(f"bench_deploy: central cnn {central['samples_per_s']:.0f} samples/s with {central['config']['threads']} thread(s) "
      f"(1: {runs[0]['samples_per_s']:.0f}, {threads}: {runs[1]['samples_per_s']:.0f}), one evaluation of "
      f"{central['eval_examples']} test images {central['eval_s']:.2f} s")
print(f"bench_deploy: {rounds} rounds, 4 clients, {samples} samples: rounds {sum(walls):.1f} s (evaluations "
      f"{evals:.1f} s) + commits {commits:.1f} s = {deployed:.1f} s; floor {train_floor:.1f} s training + "
      f"{eval_floor:.1f} s evaluation = {floor:.1f} s; ratio {deployed / floor:.2f} (goal <= 1.15); "
      f"global accuracy {acc[-1] if acc else '-'}")
EOF
