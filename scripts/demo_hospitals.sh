#!/usr/bin/env bash
# Hospital data: a real federation over mutual TLS on tabular data (make demo-hospitals).
# The Wisconsin Diagnostic Breast Cancer data (569 cases, 30 features; scripts/fetch_breast_cancer.sh,
# cached in $build/datasets) split over three hospitals with different case mixes and sizes
# (scripts/hospital_split.py, seed 1), each with its own 75/25 train/test split. One fedcoord and
# three fedclient processes train an mlp with FedAvg; for comparison each hospital also trains the
# same mlp alone (a one-site run with the same settings). Federated feature statistics: each
# hospital writes its training features' count, sums and sums of squares (fedclient
# --feature-stats-out; no rows), `fedctl stats pool` pools them, and every hospital of the
# federation standardises with the pooled mean/std (fedclient --feature-stats); a hospital alone
# uses its own. `fedctl model export` writes each final model and `fedctl model evaluate` scores it
# on each hospital's test split (standardised as its fedclient did: the pooled statistics for the
# federated model, the hospital's own for its model alone) and on their union. Ends with a table
# of accuracy and ROC AUC (P(malignant)).
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${DEMO_OUT:-out/demo-hospitals}
port=${DEMO_PORT:-50061}
rounds=${DEMO_ROUNDS:-30}
steps=${DEMO_LOCAL_STEPS:-10}   # local steps of batch 32 per round
hidden=(32 16)
cache="$build/datasets/breast_cancer"
hospitals=(hospital-1 hospital-2 hospital-3)
for p in fedcoord fedclient fedctl; do
  [ -x "$bin/$p" ] || { echo "demo-hospitals: $bin/$p is missing (cmake --build $build --target $p)" >&2; exit 1; }
done
command -v python3 > /dev/null || { echo "demo-hospitals: needs python3 (apt-get install python3)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"

echo "== Wisconsin Diagnostic Breast Cancer data (python3-sklearn's copy, cached in $cache)"
raw=$(scripts/fetch_breast_cancer.sh "$cache")
echo "== split over 3 hospitals (seed 1) -> $out/data"
scripts/hospital_split.py "$raw" "$out/data" --seed 1 | sed 's/^/   /'

echo "== development PKI (fedctl pki: CA + CRL, coordinator, hospital-1..3, admin) -> $out/pki"
FEDCTL="$bin/fedctl" scripts/pki.sh "$out/pki" > "$out/pki.log"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"; }

# federate RUN PORT SITE... [-- FEDCLIENT ARG...]: fedcoord (--keep-serving, so that the model can be exported) and one
# fedclient per site; waits for the run to finish and the clients to exit, exports the final model
# to $out/RUN.safetensors, stops the coordinator.
federate() {
  local run=$1 p=$2
  shift 2
  local sites=() extra=() names
  while [ $# -gt 0 ] && [ "$1" != -- ]; do sites+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; extra=("$@"); }
  names=$(IFS=,; echo "${sites[*]}")
  local addr="127.0.0.1:$p" dir="$out/$run"
  mkdir -p "$dir"
  "$bin/fedcoord" --listen "$addr" --tls-ca "$out/pki/ca.crt" --tls-cert "$out/pki/coordinator.crt" \
    --tls-key "$out/pki/coordinator.key" --tls-crl "$out/pki/crl.pem" --data-dir "$dir/coordinator-db" \
    --keep-serving --run-id "$run" --strategy fedavg --model mlp --hidden "${hidden[@]}" \
    --eval-dataset none --input-shape 30 --num-classes 2 --rounds "$rounds" --min-clients "${#sites[@]}" \
    --client-names "$names" --local-steps "$steps" --batch-size 32 --lr 0.05 --momentum 0.9 --seed 1 \
    --threads 1 --heartbeat-ms 500 --finish-grace-s 2 > "$dir/fedcoord.log" 2>&1 &
  local coord=$!
  pids+=("$coord")
  local clients=() s
  for s in "${sites[@]}"; do
    "$bin/fedclient" --coordinator "$addr" --tls-ca "$out/pki/ca.crt" --tls-cert "$out/pki/$s.crt" \
      --tls-key "$out/pki/$s.key" --dataset csv --train-csv "$out/data/$s/train.csv" \
      --test-csv "$out/data/$s/test.csv" --label-column diagnosis --state-dir "$dir/$s-state" \
      --threads 1 --max-backoff-s 1 ${extra[@]+"${extra[@]}"} > "$dir/$s.log" 2>&1 &  # co-located sites: one thread each
    pids+=("$!")
    clients+=("$!")
  done
  local fedctl=("$bin/fedctl" --coordinator "$addr" --pki-dir "$out/pki" --identity admin --timeout-s 20)
  local state= i
  for i in $(seq 1 1500); do  # at most ~5 minutes
    kill -0 "$coord" 2>/dev/null || { echo "demo-hospitals: fedcoord of run $run exited; see $dir/fedcoord.log" >&2; exit 1; }
    state=$("${fedctl[@]}" --json runs show "$run" 2>/dev/null | json_field state 2>/dev/null) || state=
    case "$state" in finished|aborted|failed|cancelled|stopped) break ;; esac
    sleep 0.2
  done
  [ "$state" = finished ] || { echo "demo-hospitals: run $run is '$state', not finished; see $dir" >&2; exit 1; }
  for c in "${clients[@]}"; do
    wait "$c" || { echo "demo-hospitals: a fedclient of run $run exited with $?; see $dir" >&2; exit 1; }
  done
  "${fedctl[@]}" rounds list --run "$run" > "$dir/rounds.txt"
  "${fedctl[@]}" model export --run "$run" --out "$out/$run.safetensors" > /dev/null
  kill "$coord"
  wait "$coord" || true
}

echo "== federated feature statistics: each hospital's count, sums and sums of squares (fedclient --feature-stats-out), pooled by fedctl stats pool -> $out/stats"
mkdir -p "$out/stats"
site_stats=()
for h in "${hospitals[@]}"; do
  "$bin/fedclient" --dataset csv --train-csv "$out/data/$h/train.csv" --label-column diagnosis \
    --feature-stats-out "$out/stats/$h.json" > /dev/null
  site_stats+=("$out/stats/$h.json")
done
"$bin/fedctl" stats pool "${site_stats[@]}" --out "$out/stats/pooled.json" > "$out/stats/pooled.txt"
head -n 1 "$out/stats/pooled.txt" | sed 's/^/   /'
grep -E '^(FEATURE|worst_radius) ' "$out/stats/pooled.txt" | sed 's/^/   /'

t0=$SECONDS
echo "== federation: fedcoord on 127.0.0.1:$port + 3 fedclients over mutual TLS, FedAvg, mlp [30 -> ${hidden[*]} -> 2], $rounds rounds of $steps local steps"
federate federated "$port" "${hospitals[@]}" -- --feature-stats "$out/stats/pooled.json"
echo "   done in $((SECONDS - t0)) s; rounds: $out/federated/rounds.txt"
t0=$SECONDS
echo "== each hospital alone: the same mlp and settings, one-site runs (ports $((port + 1))-$((port + 3)), in parallel)"
solo=()
for i in 1 2 3; do
  (federate "alone-hospital-$i" $((port + i)) "hospital-$i") &
  solo+=("$!")
done
for p in "${solo[@]}"; do wait "$p" || { echo "demo-hospitals: a one-site run failed; logs in $out" >&2; exit 1; }; done
echo "   done in $((SECONDS - t0)) s"
trap - EXIT INT TERM

# evaluate MODEL [FEDCTL ARG...]: fedctl model evaluate on the 3 test splits and their union (the
# pooled row); each split with its hospital's training statistics unless --feature-stats is given.
evaluate() {
  local model=$1 args=() h
  shift
  for h in "${hospitals[@]}"; do
    args+=(--csv "$out/data/$h/test.csv" --fit-csv "$out/data/$h/train.csv")
  done
  "$bin/fedctl" --json model evaluate --model-file "$model" --label-column diagnosis "${args[@]}" "$@"
}
evaluate "$out/federated.safetensors" --feature-stats "$out/stats/pooled.json" > "$out/eval-federated.json"
for i in 1 2 3; do
  evaluate "$out/alone-hospital-$i.safetensors" > "$out/eval-alone-hospital-$i.json"
done

echo "== accuracy and ROC AUC (P(malignant)) on each hospital's test split and on their union (global)"
python3 - "$out" <<'PY' | tee "$out/results.txt"
import json, sys
out = sys.argv[1]
fed = json.load(open(f"{out}/eval-federated.json"))
alone = [json.load(open(f"{out}/eval-alone-hospital-{i}.json")) for i in (1, 2, 3)]
f = lambda v: "-" if v is None else f"{v:.4f}"
rows = [("test set", "N", "federated acc", "federated AUC", "alone acc", "alone AUC")]
for i, r in enumerate(fed["results"]):
    mine = alone[i]["results"][i]  # hospital i's own model on its own test split
    rows.append((f"hospital-{i + 1}", str(r["n"]), f(r["accuracy"]), f(r["auc"]), f(mine["accuracy"]), f(mine["auc"])))
p = fed["pooled"]
rows.append(("global (union)", str(p["n"]), f(p["accuracy"]), f(p["auc"]), "", ""))
for i, a in enumerate(alone):
    q = a["pooled"]
    rows.append((f"global, hospital-{i + 1} alone", str(q["n"]), "", "", f(q["accuracy"]), f(q["auc"])))
w = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
for r in rows:
    print("  ".join(r[c].ljust(w[c]) for c in range(len(r))).rstrip())
PY
echo "== logs, RocksDB state and rounds in $out/{federated,alone-hospital-N}; models $out/federated.safetensors," \
     "$out/alone-hospital-N.safetensors; scores $out/eval-*.json; data $out/data"
echo "   e.g. $bin/fedctl model evaluate --model-file $out/federated.safetensors --label-column diagnosis \\"
echo "          --csv $out/data/hospital-1/test.csv --feature-stats $out/stats/pooled.json"
