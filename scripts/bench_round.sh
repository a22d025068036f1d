#!/usr/bin/env bash
# A communication-bound deployment round against its floor (issue 20), all in one run:
# fedcoord and 4 fedclients over mutual TLS on loopback, the 37M-parameter MLP 784-4096x3-10
# (147 MB of fp32), one local step of batch 32 per round, no server-side evaluation.
#   floor = bytes moved (4 downloads + 4 uploads of the model) / the raw mutual-TLS loopback rate
#           (fedbench_upload's raw copy, measured first) + the step's compute (the slowest
#           client's train_s, as the clients report it)
# Prints each round's wall time, its ratio to the floor, the clients' fit times (and how much of
# them is the step itself) and the coordinator's peak resident memory against the model's size.
# The clients do not evaluate before training (--local-eval-every 0; LOCAL_EVAL_EVERY=1 to measure
# that too): a fit is then the step and its overhead.
# Usage: scripts/bench_round.sh [build-dir]   (ROUNDS=3 CLIENTS=4 BENCH_OUT=out/bench_round)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${BENCH_OUT:-out/bench_round}
rounds=${ROUNDS:-3}
clients=${CLIENTS:-4}
port=${BENCH_PORT:-50071}
rm -rf "$out"
mkdir -p "$out"

names=()
identities=()
for i in $(seq 1 "$clients"); do
  names+=("hospital-$i")
  identities+=(--client "hospital-$i")
done
scripts/pki.sh "$out/pki" "${identities[@]}" > "$out/pki.log"
"$bin/fedsim" partition --partition dirichlet --alpha 0.5 --clients "$clients" --seed 1 \
  --client-test-fraction 0.2 --save-partition "$out/partition.json" > "$out/partition.log"

# The raw TLS rate on this machine, now (best of 3 copies of the same 147 MB).
"$bin/fedbench_upload" --repeat 3 --round-gap-ms 200 > "$out/bench_upload.log" 2>&1
raw_mbps=$(sed -n 's/.*raw_tls_MBps=\([0-9]*\).*/\1/p' "$out/bench_upload.log")
[ -n "$raw_mbps" ] || { echo "bench_round: no raw TLS rate in $out/bench_upload.log" >&2; exit 1; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

list=$(IFS=,; echo "${names[*]}")
/usr/bin/time -f "%M" -o "$out/fedcoord.maxrss_kb" \
  "$bin/fedcoord" --listen "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
  --tls-cert "$out/pki/coordinator.crt" --tls-key "$out/pki/coordinator.key" \
  --data-dir "$out/db" --run-id bench --strategy fedavg --model mlp --hidden 4096 4096 4096 \
  --rounds "$rounds" --min-clients "$clients" --client-names "$list" --local-steps 1 --batch-size 32 \
  --lr 0.01 --seed 1 --eval-dataset none --local-eval-every "${LOCAL_EVAL_EVERY:-0}" --finish-grace-s 3 \
  --log-level debug > "$out/fedcoord.log" 2>&1 &
coord=$!
pids+=("$coord")
for i in $(seq 1 "$clients"); do
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$i.crt" --tls-key "$out/pki/hospital-$i.key" \
    --partition-file "$out/partition.json" --client-index $((i - 1)) --state-dir "$out/hospital-$i" \
    --threads 1 > "$out/hospital-$i.log" 2>&1 &
  pids+=("$!")
done
status=0
wait "$coord" || status=$?
for p in "${pids[@]:1}"; do wait "$p" || status=$?; done
trap - EXIT INT TERM
[ "$status" -eq 0 ] || { echo "bench_round: a process failed (exit $status); logs in $out" >&2; exit 1; }

python3 - "$out" "$rounds" "$clients" "$raw_mbps" <<'EOF'
import re, sys
out, rounds, clients, raw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
params = (784 * 4096 + 4096) + 2 * (4096 * 4096 + 4096) + (4096 * 10 + 10)
model_mb = params * 4 / 1e6
coord = open(f"{out}/fedcoord.log").read()
walls = {int(r): float(s) for r, s in re.findall(r"round (\d+)/\d+: clients .*\(([\d.]+)s\)", coord)}
# A round's period: from the previous round's commit to its own (the log line follows the commit).
def seconds(stamp):
    h, m, sec = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)
stamps = {int(r): seconds(t) for t, r in re.findall(r"\[[\d-]+ ([\d:.]+)\] \[fedcoord\] \[info\] (?:\[[^\]]*\] )?round (\d+)/\d+: clients", coord)}
commits = {int(r): float(c) for r, c in re.findall(r"round (\d+): \d+ samples, [\d.]+ s to aggregate, [\d.]+ s to evaluate, ([\d.]+) s to commit", coord)}
peaks = [int(p) for p in re.findall(r"s to commit; memory \d+ MB, peak (\d+) MB", coord)]
fits, steps = {}, {}
for i in range(1, clients + 1):
    log = open(f"{out}/hospital-{i}.log").read()
    for r, total, train in re.findall(r"round (\d+): fit done in ([\d.]+) s \(training ([\d.]+) s\)", log):
        fits.setdefault(int(r), []).append(float(total))
        steps.setdefault(int(r), []).append(float(train))
rss_mb = int(open(f"{out}/fedcoord.maxrss_kb").read().split()[-1]) / 1024 * 1.048576
transfer_s = 2 * clients * model_mb / raw
print(f"bench_round: mlp 784-4096x3-10 ({model_mb:.0f} MB), {clients} clients, 1 step of batch 32; "
      f"raw TLS {raw:.0f} MB/s -> transfer floor {transfer_s:.2f} s")
for r in sorted(walls):
    step = max(steps.get(r, [0]))
    floor = transfer_s + step
    fit = max(fits.get(r, [0]))
    period = stamps[r] - stamps[r - 1] if r - 1 in stamps else float("nan")
    print(f"bench_round: round {r}: {walls[r]:.2f} s + commit {commits.get(r, 0):.2f} s (period {period:.2f} s), "
          f"floor {floor:.2f} s, ratio {walls[r] / floor:.2f} (period {period / floor:.2f}; goal <= 3); "
          f"slowest fit {fit:.2f} s of which the step {step:.2f} s "
          f"(fit overhead {(fit - step) / walls[r] * 100:.0f}% of the round, goal < 10%)")
print(f"bench_round: coordinator peak RSS {rss_mb:.0f} MB = {rss_mb / model_mb:.1f}x the model (goal <= 3x); "
      f"peak after each round (MB): {peaks}")
EOF
