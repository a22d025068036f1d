#!/usr/bin/env bash
# Soak (issue 23): a small federation run for many rounds while the coordinator's resident memory
# and open file descriptors are sampled after every committed round, from its Prometheus
# endpoint (process_resident_memory_bytes, process_open_fds). fedcoord + 3 fedclients over
# mutual TLS on loopback, an MLP 784-32-10 on a Dirichlet(0.5) split of 3,000 Fashion-MNIST
# images, 2 local steps a round, the global model evaluated every round.
# Writes $out/samples.csv (round, rss_bytes, peak_bytes, open_fds, wall_s) and prints the growth
# from round WARMUP to the last; exits 1 when the descriptors grew by more than 8 (RocksDB's table
# files come and go) or memory by more than MAX_RSS_GROWTH_MB after the warm-up.
# Usage: scripts/soak.sh [build-dir]   (ROUNDS=200 WARMUP=20 MAX_RSS_GROWTH_MB=16 SOAK_OUT=out/soak)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${SOAK_OUT:-out/soak}
rounds=${ROUNDS:-200}
warmup=${WARMUP:-20}
max_growth_mb=${MAX_RSS_GROWTH_MB:-16}
port=${SOAK_PORT:-50091}
mport=${SOAK_METRICS_PORT:-9491}
rm -rf "$out"
mkdir -p "$out"

scripts/pki.sh "$out/pki" > "$out/pki.log"
"$bin/fedsim" partition --partition dirichlet --alpha 0.5 --clients 3 --seed 1 --train-limit 3000 \
  --client-test-fraction 0.2 --save-partition "$out/partition.json" > "$out/partition.log"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/fedcoord" --listen "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" --tls-cert "$out/pki/coordinator.crt" \
  --tls-key "$out/pki/coordinator.key" --data-dir "$out/db" --run-id soak --model mlp --hidden 32 \
  --rounds "$rounds" --min-clients 3 --client-names hospital-1,hospital-2,hospital-3 --local-steps 2 \
  --batch-size 32 --lr 0.05 --seed 1 --heartbeat-ms 500 --finish-grace-s 2 --threads 1 \
  --metrics-listen "127.0.0.1:$mport" > "$out/fedcoord.out" 2> "$out/fedcoord.log" &
coord=$!
pids+=("$coord")
for i in 1 2 3; do
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$i.crt" --tls-key "$out/pki/hospital-$i.key" \
    --partition-file "$out/partition.json" --client-index $((i - 1)) --train-limit 3000 \
    --state-dir "$out/hospital-$i" --threads 1 --device cpu > "$out/hospital-$i.log" 2>&1 &
  pids+=("$!")
done

# shellcheck source=scripts/lib/metrics.sh
. "$(dirname "$0")/lib/metrics.sh"   # scrape PORT, metric_value NAME BODY

echo "round,rss_bytes,peak_bytes,open_fds,wall_s" > "$out/samples.csv"
last=0
start=$(date +%s.%N)
while [ "$last" -lt "$rounds" ]; do
  if ! kill -0 "$coord" 2>/dev/null; then
    echo "soak: fedcoord ended before round $rounds (log: $out/fedcoord.log)" >&2
    exit 1
  fi
  body=$(scrape "$mport" 2>/dev/null || true)
  r=$(metric_value 'fl_round{run="soak"}' "$body")
  r=${r:-0}
  if [ "$r" -gt "$last" ]; then
    last=$r
    now=$(date +%s.%N)
    echo "$r,$(metric_value process_resident_memory_bytes "$body"),$(metric_value fl_process_peak_resident_memory_bytes "$body"),$(metric_value process_open_fds "$body"),$(awk -v a="$now" -v b="$start" 'BEGIN { printf "%.2f", a - b }')" >> "$out/samples.csv"
    if [ $((r % 20)) -eq 0 ]; then echo "soak: round $r/$rounds"; fi
  fi
  sleep 0.05
done
wait "$coord" || true
for p in "${pids[@]:1}"; do wait "$p" || true; done
trap - EXIT INT TERM

# Rounds can commit faster than one scrape: the samples are the rounds seen, not every round.
# Growth is the least-squares slope of resident memory over the rounds after the warm-up, times
# their number: single samples swing by tens of MB as the allocator returns memory.
awk -F, -v warm="$warmup" -v maxmb="$max_growth_mb" '
  NR == 1 { next }
  { n++; round[n] = $1; rss[n] = $2 / 1048576; fds[n] = $4; wall[n] = $5
    if (base == 0 && $1 >= warm) { base = n } }
  END {
    if (base == 0 || n - base < 2) { print "soak: fewer than " warm + 2 " rounds sampled"; exit 1 }
    m = 0; sx = 0; sy = 0; sxx = 0; sxy = 0; maxr = 0; maxf = 0; minf = 1e9
    for (i = base; i <= n; i++) {
      m++; sx += round[i]; sy += rss[i]; sxx += round[i] * round[i]; sxy += round[i] * rss[i]
      if (rss[i] > maxr) maxr = rss[i]; if (fds[i] > maxf) maxf = fds[i]; if (fds[i] < minf) minf = fds[i]
    }
    slope = (m * sxy - sx * sy) / (m * sxx - sx * sx)
    growth = slope * (round[n] - round[base])
    printf "soak: %d rounds in %.0f s (%d sampled); after round %d: rss %.1f MB -> %.1f MB (at most %.1f MB), trend %+.3f MB/round = %+.1f MB over %d rounds; open fds %d -> %d (%d..%d)\n",
           round[n], wall[n], n, round[base], rss[base], rss[n], maxr, slope, growth, round[n] - round[base], fds[base], fds[n], minf, maxf
    # RocksDB opens and closes table files as it compacts: a few descriptors come and go.
    if (maxf > minf + 8 || growth > maxmb) { print "soak: GROWTH beyond the bounds"; exit 1 }
    print "soak: flat"
  }' "$out/samples.csv"
