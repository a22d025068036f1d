#!/usr/bin/env bash
# The Python round trip (docs/python.md), as a test:
#   1. a model defined in Python (tests/python/model.py) is scripted and saved with
#      torch.jit.script(...).save(...);
#   2. fedsim trains it (2 virtual clients, 2 rounds) and commits its final model to
#      --checkpoint-dir (round-<N>/global.safetensors);
#   3. fedcoord + 2 fedclient processes train it over mutual TLS on 127.0.0.1 (2 rounds), and
#      `fedctl model export` writes the global model to safetensors;
#   4. each global model is loaded back into the same nn.Module in Python
#      (tests/python/load_global.py), evaluated on the Fashion-MNIST test set, and its accuracy
#      and loss must match what the platform reported.
#
#   tests/python/round_trip.sh [BUILD_DIR]      (default: ./build; ctest passes its own)
#
# Exit 0: passed. 77: skipped (no python3 that can `import torch`: apt-get install python3-torch;
# $PYTHON, if set, is the only interpreter tried). Anything else: failed (the logs are printed).
# KEEP=1 keeps the work directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
bin=$build/bin
skip=77
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree

# $PYTHON if set, else the first python3 with torch: PATH's, then Debian's (a pyenv or venv python3
# earlier in PATH does not see python3-torch).
py=
candidates=(python3 /usr/bin/python3)
[ -z "${PYTHON:-}" ] || candidates=("$PYTHON")
for c in "${candidates[@]}"; do
  command -v "$c" >/dev/null 2>&1 || continue
  if "$c" -c 'import torch' >/dev/null 2>&1; then py=$(command -v "$c"); break; fi
done
if [ -z "$py" ]; then
  echo "round_trip: SKIPPED: no python3 that can 'import torch' (apt-get install python3-torch, or set PYTHON)"
  exit "$skip"
fi
data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
[ -d "$data" ] || { echo "round_trip: no Fashion-MNIST in $data (dataset-fashion-mnist or FASHION_MNIST_DIR)" >&2; exit 1; }
for p in fedsim fedcoord fedclient fedctl; do
  [ -x "$bin/$p" ] || { echo "round_trip: $bin/$p is missing: build first" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/fl-python-round-trip.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne "$skip" ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      echo "---- $f (last 30 lines)"; tail -n 30 "$f"
    done
  fi
  if [ -n "${KEEP:-}" ]; then echo "round_trip: kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Small and quick: 2,000 training examples, 2 clients, 2 rounds of 20 local steps, one thread.
train_limit=2000
rounds=2
train=(--local-steps 20 --batch-size 32 --lr 0.05 --momentum 0.9 --seed 1)
echo "== python: $py (torch $("$py" -c 'import torch; print(torch.__version__)'))"

echo "== 1. the model, defined in Python and saved with torch.jit.script(...).save(...)"
"$py" "$here/model.py" "$work/model.pt" --seed 1

echo "== 2. fedsim: 2 virtual clients, $rounds rounds; its final model from --checkpoint-dir"
"$bin/fedsim" --data-dir "$data" --train-limit "$train_limit" --model torchscript --model-path "$work/model.pt" \
  --clients 2 --rounds "$rounds" "${train[@]}" --workers 1 --threads 1 \
  --checkpoint-dir "$work/sim" --report "$work/sim-report.json" --log-level warn > "$work/fedsim.log" 2>&1
tail -n 1 "$work/fedsim.log"
last=$(cat "$work/sim/LATEST")
[ "$last" = "$rounds" ] || { echo "round_trip: fedsim's LATEST is '$last', expected $rounds" >&2; exit 1; }
read -r sim_acc sim_loss < <("$py" -c '
import json, sys
r = json.load(open(sys.argv[1]))["rounds"][-1]
print(r["global_accuracy"], r["global_loss"])' "$work/sim-report.json")
echo "fedsim reported: global_accuracy=$sim_acc global_loss=$sim_loss"
"$py" "$here/load_global.py" "$work/sim/round-$last/global.safetensors" --data-dir "$data" \
  --expect-accuracy "$sim_acc" --expect-loss "$sim_loss"

echo "== 3. fedcoord + 2 fedclients over mutual TLS, $rounds rounds; fedctl model export"
FEDCTL="$bin/fedctl" "$root/scripts/pki.sh" "$work/pki" --client hospital-1 --client hospital-2 --admin admin \
  > "$work/pki.log" 2>&1
"$bin/fedsim" partition --data-dir "$data" --train-limit "$train_limit" --clients 2 --seed 1 \
  --save-partition "$work/partition.json" > "$work/partition.log" 2>&1
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
"$bin/fedcoord" --listen "$addr" --tls-ca "$work/pki/ca.crt" --tls-cert "$work/pki/coordinator.crt" \
  --tls-key "$work/pki/coordinator.key" --tls-crl "$work/pki/crl.pem" --data-dir "$work/coordinator-db" \
  --keep-serving --run-id py --model torchscript --model-path "$work/model.pt" --eval-data-dir "$data" \
  --rounds "$rounds" --min-clients 2 --client-names hospital-1,hospital-2 "${train[@]}" --threads 1 \
  --heartbeat-ms 500 --finish-grace-s 2 > "$work/fedcoord.log" 2>&1 &
coord=$!
pids+=("$coord")
clients=()
for i in 1 2; do
  "$bin/fedclient" --coordinator "$addr" --tls-ca "$work/pki/ca.crt" --tls-cert "$work/pki/hospital-$i.crt" \
    --tls-key "$work/pki/hospital-$i.key" --data-dir "$data" --train-limit "$train_limit" \
    --partition-file "$work/partition.json" --client-index $((i - 1)) --model torchscript --model-path "$work/model.pt" \
    --state-dir "$work/hospital-$i" --threads 1 --max-backoff-s 1 > "$work/hospital-$i.log" 2>&1 &
  pids+=("$!")
  clients+=("$!")
done
fedctl=("$bin/fedctl" --coordinator "$addr" --pki-dir "$work/pki" --identity admin --timeout-s 20)
state=
for _ in $(seq 1 600); do  # at most ~2 minutes
  kill -0 "$coord" 2>/dev/null || { echo "round_trip: fedcoord exited" >&2; exit 1; }
  state=$("${fedctl[@]}" --json runs show py 2>/dev/null |
          "$py" -c 'import json, sys; print(json.load(sys.stdin).get("state", ""))' 2>/dev/null) || state=
  [ "$state" = finished ] && break
  case "$state" in failed|cancelled|stopped) break ;; esac
  sleep 0.2
done
[ "$state" = finished ] || { echo "round_trip: run 'py' is '$state', not finished" >&2; exit 1; }
for _ in $(seq 1 150); do  # the clients hear 'done' and exit: at most ~30 s
  alive=0
  for c in "${clients[@]}"; do kill -0 "$c" 2>/dev/null && alive=1; done
  [ "$alive" -eq 1 ] || break
  sleep 0.2
done
for c in "${clients[@]}"; do
  kill -0 "$c" 2>/dev/null && { echo "round_trip: a fedclient did not exit after the run finished" >&2; exit 1; }
  wait "$c" || { echo "round_trip: a fedclient exited with $?" >&2; exit 1; }
done
read -r fed_acc fed_loss < <("${fedctl[@]}" --json rounds show "$rounds" --run py | "$py" -c '
import json, sys
d = json.load(sys.stdin)
print(d["info"]["global_accuracy"], d["global_loss"])')
echo "fedcoord reported: round $rounds accuracy=$fed_acc loss=$fed_loss"
"${fedctl[@]}" model export --run py --out "$work/global.safetensors"
"$py" "$here/load_global.py" "$work/global.safetensors" --data-dir "$data" \
  --expect-accuracy "$fed_acc" --expect-loss "$fed_loss"

echo "round_trip: passed (fedsim accuracy $sim_acc, federation accuracy $fed_acc; Python agrees on both)"
