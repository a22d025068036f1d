#!/usr/bin/env bash
# The main job on one machine: a real federation over mutual TLS on loopback.
# A development PKI (CA, coordinator, 3 hospitals), one fedcoord and three fedclient
# processes, each hospital on its own Dirichlet(0.5) shard of Fashion-MNIST; 5 rounds of
# FedAvg with the `cnn` model. Ends with "demo: rounds=5 global_accuracy=0.xxxx".
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${DEMO_OUT:-out/demo}
port=${DEMO_PORT:-50051}
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
  --seed 1 --finish-grace-s 5 > "$out/fedcoord.out" 2> >(tee "$out/fedcoord.log" >&2) &
coord=$!
pids+=("$coord")

for i in 1 2 3; do
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$i.crt" --tls-key "$out/pki/hospital-$i.key" \
    --partition-file "$out/partition.json" --client-index $((i - 1)) \
    --state-dir "$out/hospital-$i" --threads 1 > "$out/hospital-$i.log" 2>&1 &  # three sites share this machine
  pids+=("$!")
  echo "== fedclient hospital-$i started (log: $out/hospital-$i.log)"
done

status=0
wait "$coord" || status=$?
for p in "${pids[@]:1}"; do wait "$p" || status=$?; done
trap - EXIT INT TERM
if [ "$status" -ne 0 ]; then
  echo "demo: a process failed (exit $status); logs in $out" >&2
  exit "$status"
fi
line=$(grep '^fedcoord: run=' "$out/fedcoord.out")
acc=${line##*global_accuracy=}
echo "== all processes shut down cleanly; logs and RocksDB state in $out"
echo "demo: rounds=$rounds global_accuracy=$acc"
