#!/usr/bin/env bash
# Crash consistency (issue 23): a deterministic federation (fedcoord + 3 fedclients over mutual
# TLS, --client-names, one seed) run twice. The reference run is left alone; in the other, SIGKILL
# hits KILLS times at seeded random moments and the killed process is restarted with the same
# command line each time:
#   MODE=coordinator  fedcoord is killed (model download, upload, aggregation, commit: wherever
#                     the moment falls; the log line it was writing is reported per kill)
#   MODE=client       a random fedclient is killed (during local training, mid-upload, polling)
#   MODE=quorum       a random fedclient is killed as its training ends (mid-upload) and stays down
#                     past the round deadline (DEADLINE=10 s): the round completes with the other
#                     two, the site rejoins a later round (KILLS=3 by default; no reference run:
#                     the model differs by design)
# With coordinator and client, the run must complete, and its final global model must be bit-identical to the
# reference run's (every acknowledged update kept, none counted twice). With MODE=coordinator
# each client must also have trained each round exactly once: an acknowledged update that was
# lost would have been asked for, and trained, again.
# Usage: scripts/crash_test.sh [build-dir]   (MODE=coordinator KILLS=20 SEED=1 ROUNDS=40 CRASH_OUT=out/crash)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
mode=${MODE:-coordinator}
if [ "${MODE:-coordinator}" = quorum ]; then kills=${KILLS:-3}; else kills=${KILLS:-20}; fi
deadline=${DEADLINE:-$([ "${MODE:-coordinator}" = quorum ] && echo 10 || echo 600)}
seed=${SEED:-1}
rounds=${ROUNDS:-40}
out=${CRASH_OUT:-out/crash}
port=${CRASH_PORT:-50291}
case "$mode" in coordinator | client | quorum) ;; *) echo "crash_test: MODE must be coordinator, client or quorum, not '$mode'" >&2; exit 2 ;; esac
rm -rf "$out"
mkdir -p "$out"

scripts/pki.sh "$out/pki" > "$out/pki.log"
"$bin/fedsim" partition --partition dirichlet --alpha 0.5 --clients 3 --seed 1 --train-limit 3000 \
  --client-test-fraction 0.2 --save-partition "$out/partition.json" > "$out/partition.log"

# The seeded moments: KILLS delays in [0.05, 0.95) s (MODE=coordinator: after the clients are back) and the victims (MODE=client).
awk -v n="$kills" -v s="$seed" 'BEGIN { srand(s); for (i = 0; i < n; i++) printf "%.2f %d\n", 0.05 + 0.9 * rand(), 1 + int(3 * rand()) }' \
  > "$out/moments.txt"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start_coordinator() {  # $1: run dir; appends to its log
  "$bin/fedcoord" --listen "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" --tls-cert "$out/pki/coordinator.crt" \
    --tls-key "$out/pki/coordinator.key" --data-dir "$1/db" --run-id crash --model mlp --hidden 512 \
    --rounds "$rounds" --min-clients 3 --client-names hospital-1,hospital-2,hospital-3 --local-steps 100 \
    --batch-size 32 --lr 0.05 --momentum 0.9 --seed 7 --heartbeat-ms 300 --finish-grace-s 3 --threads 1 \
    --registration-timeout-s 300 --round-deadline-s "$deadline" --log-level debug >> "$1/fedcoord.out" 2>> "$1/fedcoord.log" &
  coord=$!
}
start_client() {  # $1: run dir, $2: 1..3
  "$bin/fedclient" --coordinator "127.0.0.1:$port" --tls-ca "$out/pki/ca.crt" \
    --tls-cert "$out/pki/hospital-$2.crt" --tls-key "$out/pki/hospital-$2.key" \
    --partition-file "$out/partition.json" --client-index $(($2 - 1)) --train-limit 3000 \
    --state-dir "$1/hospital-$2" --threads 1 --device cpu --max-backoff-s 0.5 >> "$1/hospital-$2.log" 2>&1 &
  client[$2]=$!
}

# One federation in $1; with $2 = kill, the kills of $mode. Returns when the run is complete.
federation() {
  local dir=$1 kill=${2:-}
  mkdir -p "$dir"
  declare -gA client cfrom
  start_coordinator "$dir"
  for i in 1 2 3; do start_client "$dir" "$i"; done
  if [ "$kill" = kill ]; then
    local k=0
    local from=1
    cfrom=()
    while read -r delay victim; do
      k=$((k + 1))
      if [ "$mode" = quorum ]; then
        # As the victim's next training ends its upload starts: kill it then, keep it down past
        # the round's deadline, bring it back.
        local seen
        seen=$(grep -c "fit done" "$dir/hospital-$victim.log" || true)
        for _ in $(seq 1 6000); do
          [ "$(grep -c "fit done" "$dir/hospital-$victim.log" || true)" -gt "$seen" ] && break
          kill -0 "$coord" 2>/dev/null || break
          sleep 0.01
        done
        kill -0 "$coord" 2>/dev/null || break
        kill -9 "${client[$victim]}" 2>/dev/null || true
        wait "${client[$victim]}" 2>/dev/null || true
        echo "kill $k: hospital-$victim as its training ended: $(tail -n 1 "$dir/hospital-$victim.log" | cut -c 27-140)" |
          tee -a "$dir/kills.txt"
        sleep $((deadline + 2))
        start_client "$dir" "$victim"
        continue
      fi
      if [ "$mode" = coordinator ]; then
        # Aim past the restart: once the three clients are back (at most 10 s), the seeded delay
        # falls in a download, training, an upload, the aggregation or the commit.
        for _ in $(seq 1 100); do
          [ "$(tail -n +"$from" "$dir/fedcoord.log" | grep -c "registered as #")" -ge 3 ] && break
          kill -0 "$coord" 2>/dev/null || break
          sleep 0.1
        done
      else  # likewise once the victim is registered: its kill falls in a download, training or an upload
        for _ in $(seq 1 100); do
          [ "$(tail -n +"${cfrom[$victim]:-1}" "$dir/hospital-$victim.log" | grep -c "registered with")" -ge 1 ] && break
          kill -0 "${client[$victim]}" 2>/dev/null || break
          sleep 0.1
        done
      fi
      sleep "$delay"
      if [ "$mode" = coordinator ]; then
        kill -0 "$coord" 2>/dev/null || break  # finished already
        local last
        last=$(tail -n 1 "$dir/fedcoord.log" | cut -c 27-140)
        kill -9 "$coord" 2>/dev/null || true
        wait "$coord" 2>/dev/null || true
        echo "kill $k: fedcoord ${delay}s after the clients were back, writing: $last" | tee -a "$dir/kills.txt"
        from=$(($(wc -l < "$dir/fedcoord.log") + 1))
        start_coordinator "$dir"
      else
        kill -0 "${client[$victim]}" 2>/dev/null || continue
        local last
        last=$(tail -n 1 "$dir/hospital-$victim.log" | cut -c 27-140)
        kill -9 "${client[$victim]}" 2>/dev/null || true
        wait "${client[$victim]}" 2>/dev/null || true
        echo "kill $k: hospital-$victim ${delay}s after it registered, writing: $last" | tee -a "$dir/kills.txt"
        cfrom[$victim]=$(($(wc -l < "$dir/hospital-$victim.log") + 1))
        start_client "$dir" "$victim"
      fi
    done < "$out/moments.txt"
  fi
  local t=0
  while kill -0 "$coord" 2>/dev/null; do
    sleep 0.5
    t=$((t + 1))
    if [ "$t" -gt 1200 ]; then echo "crash_test: the run did not complete in 10 minutes ($dir)" >&2; return 1; fi
  done
  wait "$coord" || { echo "crash_test: fedcoord failed ($dir/fedcoord.log)" >&2; return 1; }
  # A client whose coordinator ended the run while it was away has nobody left to tell it.
  for i in 1 2 3; do
    for _ in $(seq 1 20); do kill -0 "${client[$i]}" 2>/dev/null || break; sleep 0.5; done
    kill "${client[$i]}" 2>/dev/null || true
    wait "${client[$i]}" 2>/dev/null || true
  done
}

if [ "$mode" = quorum ]; then
  echo "== $kills clients killed as their upload starts, down past the ${deadline} s deadline (seed $seed)"
  federation "$out/faulty" kill
  trap - EXIT INT TERM
  log="$out/faulty/fedcoord.log"
  status=0
  done_rounds=$(grep -c "round [0-9]*/$rounds: clients" "$log" || true)
  short=$(grep -c "round [0-9]*/$rounds: clients [12] (dropped [12])" "$log" || true)
  if [ "$done_rounds" -ne "$rounds" ]; then echo "crash_test: FAIL: $done_rounds of $rounds rounds committed" >&2; status=1; fi
  if [ "$short" -lt 1 ]; then echo "crash_test: FAIL: no round completed with the quorum" >&2; status=1; fi
  if ! grep -q "round $rounds/$rounds: clients 3 (dropped 0)" "$log"; then
    echo "crash_test: FAIL: the killed sites did not rejoin by the last round" >&2
    status=1
  fi
  # A round that went on without a site never waited past its deadline (+ 3 s of slack).
  slow=$(grep -o "round [0-9]*/$rounds: clients [12] (dropped [12]).*(\([0-9.]*\)s)" "$log" |
         sed 's/.*(\([0-9.]*\)s)$/\1/' | awk -v d="$deadline" '$1 > d + 3' | wc -l)
  if [ "$slow" -ne 0 ]; then echo "crash_test: FAIL: $slow round(s) waited past the deadline" >&2; status=1; fi
  [ "$status" -eq 0 ] && echo "crash_test: $rounds rounds committed, $short without a killed site, none past the ${deadline} s deadline; every site back in round $rounds"
  exit "$status"
fi
echo "== reference run (no faults)"
federation "$out/reference"
echo "== $kills kills of the $mode (seed $seed)"
federation "$out/faulty" kill

model() { ls "$1"/db/models/*-"$rounds".safetensors; }
ref=$(model "$out/reference")
got=$(model "$out/faulty")
status=0
if cmp -s "$ref" "$got"; then
  echo "crash_test: the final global model (round $rounds) is bit-identical to the reference run's ($(stat -c %s "$ref") bytes)"
else
  echo "crash_test: FAIL: the final global model differs from the reference run's" >&2
  status=1
fi
if [ "$mode" = coordinator ]; then
  for i in 1 2 3; do
    for r in $(seq 1 "$rounds"); do
      n=$(grep -c "round $r: fit done" "$out/faulty/hospital-$i.log" || true)
      if [ "$n" -ne 1 ]; then
        echo "crash_test: FAIL: hospital-$i trained round $r $n times (an acknowledged update lost?)" >&2
        status=1
      fi
    done
  done
  [ "$status" -eq 0 ] && echo "crash_test: every hospital trained every round exactly once"
fi
done_kills=$(wc -l < "$out/faulty/kills.txt" 2>/dev/null || echo 0)
echo "crash_test: $done_kills kills of the $mode; run complete; details in $out/faulty/kills.txt"
trap - EXIT INT TERM
exit "$status"
