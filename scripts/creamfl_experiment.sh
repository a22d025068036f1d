#!/bin/bash
# CreamFL against its two baselines on the paired Fashion-MNIST caption benchmark
# (docs/creamfl.md, docs/results.md "CreamFL"): (a) CreamFL, (b) the server trained on P alone
# (kd_weight=0), (c) CreamFL with uniform client weights, all else equal, then a table of the
# server's final image->text and text->image R@1/5/10 and their sum.
#   scripts/creamfl_experiment.sh [OUT_DIR] [extra fedsim flags...]
# Environment: ROUNDS (12), LOCAL_EPOCHS (1), TRAIN_LIMIT (12000), KD_WEIGHT (0.3: (a) and (c); (b) is 0),
# CLIENT_MODELS (3 image, 3 text, 4 multimodal: the list below), RUNS ("a b c"; (b) does not depend
# on the clients, so "a c" reuses an earlier (b) when only client settings change), FEDSIM (build/bin/fedsim).
set -euo pipefail
out=${1:-out/creamfl}
shift || true
mkdir -p "$out"
fedsim=${FEDSIM:-$(dirname "$0")/../build/bin/fedsim}
client_models=${CLIENT_MODELS:-creamfl-image-s,creamfl-image-m,creamfl-image-s,creamfl-text,creamfl-text,creamfl-text,creamfl-multi,creamfl-multi,creamfl-multi,creamfl-multi}
kd=${KD_WEIGHT:-0.3}
run() {
  local name=$1
  shift
  "$fedsim" --strategy creamfl --model creamfl-server --hidden 64 \
    --client-models "$client_models" \
    --clients 10 --partition iid --train-limit "${TRAIN_LIMIT:-12000}" --rounds "${ROUNDS:-12}" --local-epochs "${LOCAL_EPOCHS:-1}" \
    --optimizer adam --lr 0.001 --batch-size 64 --workers 2 --seed 1 --no-progress \
    --strategy-param server_epochs=2 --report "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  tail -1 "$out/$name.log"
}
runs=" ${RUNS:-a b c} "
[[ $runs == *" a "* ]] && run a --strategy-param kd_weight="$kd" "$@"
[[ $runs == *" b "* ]] && run b --strategy-param kd_weight=0 "$@"
[[ $runs == *" c "* ]] && run c --strategy-param kd_weight="$kd" --strategy-param weights=uniform "$@"
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
names = {"a": "(a) CreamFL", "b": "(b) server on P alone", "c": "(c) CreamFL, uniform weights"}
print("| run | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | sum | sum, mean of last 3 rounds |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for k, label in names.items():
    if not os.path.exists(f"{out}/{k}.json"):
        continue
    rounds = json.load(open(f"{out}/{k}.json"))["rounds"]
    s = rounds[-1]["strategy"]
    last3 = sum(r["strategy"]["rsum"] for r in rounds[-3:]) / len(rounds[-3:])
    cells = [s[f"{d}_r{n}"] for d in ("i2t", "t2i") for n in (1, 5, 10)]
    print(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {s['rsum']:.3f} | {last3:.3f} |")
PY
