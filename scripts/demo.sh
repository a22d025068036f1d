#!/usr/bin/env bash
# The main job on one machine: a real federation over mutual TLS on loopback.
# A development PKI (CA, coordinator, 3 hospitals), one fedcoord and three fedclient
# processes, each hospital on its own Dirichlet(0.5) shard of Fashion-MNIST; 5 rounds of
# FedAvg with the `cnn` model, followed live with `fedctl runs watch`. The global model is
# exported with `fedctl model export`; the coordinator and the hospitals serve Prometheus
# metrics meanwhile. Ends with "demo: rounds=5 global_accuracy=0.xxxx" and what to try next.
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${DEMO_OUT:-out/demo}
port=${DEMO_PORT:-50051}
metrics_port=${DEMO_METRICS_PORT:-9464}   # fedcoord's; the hospitals' are the next three
rounds=${DEMO_ROUNDS:-5}
steps=${DEMO_LOCAL_STEPS:-100}   # local steps per round (batch 32): keeps the demo to minutes on 2 cores
rm -rf "$out"
mkdir -p "$out"

echo "== development PKI (fedctl pki: CA + CRL, coordinator, hospital-1..3, admin) -> $out/pki"
scripts/pki.sh "$out/pki" > "$out/pki.log"

echo "== Dirichlet(0.5) partition of Fashion-MNIST over 3 hospitals"
"$bin/fedsim" partition --partition dirichlet --alpha 0.5 --clients 3 --seed 1 --client-test-fraction 0.2 \
  --save-partition "$out/partition.json"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== fedcoord on 127.0.0.1:$port (mutual TLS, RocksDB in $out/coordinator-db)"
"$bin/fedcoord" --listen "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
  --tls-cert "$out/pki/coordinator.crt" --tls-key "$out/pki/coordinator.key" --tls-crl "$out/pki/crl.pem" \
  --data-dir "$out/coordinator-db" --run-id demo --strategy fedavg --model cnn \
  --rounds "$rounds" --min-clients 3 --client-names hospital-1,hospital-2,hospital-3 --local-steps "$steps" --batch-size 32 --lr 0.05 --momentum 0.9 \
  --seed 1 --finish-grace-s 5 --keep-serving --metrics-listen "127.0.0.1:$metrics_port" \
  > "$out/fedcoord.out" 2> "$out/fedcoord.log" &
coord=$!
pids+=("$coord")

for i in 1 2 3; do
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$i.crt" --tls-key "$out/pki/hospital-$i.key" \
    --partition-file "$out/partition.json" --client-index $((i - 1)) \
    --state-dir "$out/hospital-$i" --threads 1 --metrics-listen "127.0.0.1:$((metrics_port + i))" \
    > "$out/hospital-$i.log" 2>&1 &  # three sites share this machine
  pids+=("$!")
  echo "== fedclient hospital-$i started (log: $out/hospital-$i.log)"
done

fedctl=("$bin/fedctl" --coordinator "127.0.0.1:$port" --pki-dir "$out/pki" --identity admin)
for _ in $(seq 1 120); do  # the coordinator is up once an admin can see the run
  "${fedctl[@]}" runs show demo > /dev/null 2>&1 && break
  kill -0 "$coord" 2>/dev/null || break
  sleep 0.5
done
echo "== following the run live: fedctl runs watch demo (metrics: curl http://127.0.0.1:$metrics_port/metrics)"
status=0
"${fedctl[@]}" runs watch demo --interval-s 1 || status=$?
if [ "$status" -eq 0 ]; then
  "${fedctl[@]}" model export --run demo --out "$out/global-model.safetensors" > "$out/export.log" || status=$?
  if command -v curl > /dev/null; then  # optional: a snapshot of what Prometheus would scrape
    curl -sf "http://127.0.0.1:$metrics_port/metrics" > "$out/fedcoord-metrics.txt" || true
  fi
fi
for p in "${pids[@]:1}"; do wait "$p" || status=$?; done   # the hospitals heard "done"
kill -TERM "$coord" 2>/dev/null || true
wait "$coord" || true
trap - EXIT INT TERM
if [ "$status" -ne 0 ]; then
  echo "demo: a process failed (exit $status); logs in $out" >&2
  tail -n 20 "$out/fedcoord.log" >&2 || true
  exit "$status"
fi
acc=$(grep -o 'global_accuracy [0-9.]*' "$out/fedcoord.log" | tail -n 1 | cut -d' ' -f2)
cat <<EOF

== what happened
   3 hospitals trained a CNN together for $rounds rounds of FedAvg over mutual TLS; no image left
   its hospital. The global model reached accuracy ${acc:-?} on Fashion-MNIST's 10,000 test images.
== where things are
   global model   $out/global-model.safetensors   (safetensors: load it in Python, see docs/python.md)
   logs           $out/fedcoord.log, $out/hospital-{1,2,3}.log
   run state      $out/coordinator-db (RocksDB; the coordinator resumes from it after a crash)
   PKI            $out/pki (CA, CRL, certificates of the coordinator, the hospitals and an admin)
== try next
   build/bin/fedsim                                   a simulated federation, 10 virtual clients (1 min)
   build/bin/fedsim --strategy fedprox --partition shards --rounds 10
   DEMO_ROUNDS=10 make demo                           more rounds
   make demo-hospitals                                breast-cancer data split over 3 hospitals (CSV, AUC)
   docker compose up --build                          the same federation in containers, with Prometheus
   build/bin/fedctl --help                            runs, rounds, clients, certificates, models
EOF
echo "demo: rounds=$rounds global_accuracy=${acc:-?}"
