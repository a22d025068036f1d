#!/usr/bin/env bash
# Issue #6 results: one fedsim run per strategy under the FedCMD paper's protocol
# (Fashion-MNIST, lenet5, 100 clients, Dirichlet(0.1), fraction 0.1, client test fraction 0.5,
# 200 rounds, 5 local epochs, batch 32, SGD lr 0.01), then a table of the personalized accuracy
# averaged over the last 10 rounds (fedsim's final.personalized_accuracy_last10).
#
#   scripts/run_strategies.sh                      # the default list below, one after another
#   scripts/run_strategies.sh fedavg fedper        # only these
#   ROUNDS=20 scripts/run_strategies.sh fedavg     # a short run (cost estimate)
#   scripts/run_strategies.sh --table              # only print the table of what exists
#   ALPHA=0.5 scripts/run_strategies.sh local      # another Dirichlet alpha (default 0.1)
# Output: out/strategies/NAME.json (+ .csv, .svg, .log). FEDSIM=path overrides the binary
# (copy it first when you rebuild while runs are going).
set -euo pipefail
fedsim=${FEDSIM:-build/bin/fedsim}
out=${OUT_DIR:-out/strategies}
rounds=${ROUNDS:-200}
mkdir -p "$out"

table() {
  python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
paper = {"fedavg": 77.70, "fedper": 95.71, "fedrep": 95.50, "fedbn": 79.46, "local": 95.53}
print("| strategy | ours (%) | sd of the 10 rounds | paper (%) | delta | rounds | wall time |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    j = json.load(open(os.path.join(out, f)))
    name = f[:-5]
    acc = j["final"].get("personalized_accuracy_last10")
    ours = 100 * acc if acc is not None else float("nan")
    p = paper.get(name)
    delta = f"{ours - p:+.2f}" if p is not None else "-"
    wall = j.get("total_wall_s", 0)
    # Each round's value is a mean over only the 10 selected clients: show how much it moves.
    last = [r["personalized_accuracy"] for r in j["rounds"] if r["personalized_accuracy"] is not None][-10:]
    mean = sum(last) / len(last) if last else 0
    sd = 100 * (sum((v - mean) ** 2 for v in last) / (len(last) - 1)) ** 0.5 if len(last) > 1 else 0
    print(f"| {name} | {ours:.2f} | {sd:.1f} | {p if p is not None else '-'} | {delta} | {len(j['rounds'])} | {wall / 60:.1f} min |")
PY
}

if [[ "${1:-}" == "--table" ]]; then
  table
  exit 0
fi
strategies=("$@")
[[ ${#strategies[@]} -eq 0 ]] && strategies=(fedavg fedper fedrep fedbn local fedprox scaffold fedavgm fedadam fedyogi \
  fedadagrad fedmedian trimmedmean krum multikrum)
for s in "${strategies[@]}"; do
  echo "== $s ($(date -u +%H:%M:%S))"
  "$fedsim" --model lenet5 --partition dirichlet --alpha "${ALPHA:-0.1}" --clients 100 --fraction 0.1 \
    --client-test-fraction 0.5 --rounds "$rounds" --local-epochs 5 --batch-size 32 --lr 0.01 --seed 1 \
    --eval-every 10 --strategy "$s" --no-progress --report "$out/$s.json" ${FEDSIM_ARGS:-} > "$out/$s.log" 2>&1
  tail -1 "$out/$s.log"
done
table
