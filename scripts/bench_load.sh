#!/usr/bin/env bash
# Load (issue 23): CLIENTS clients against one fedcoord on loopback, through the real client
# library and wire protocol: fedload processes of PER_PROC clients each (threads; every client
# its own identity, gRPC channel, heartbeat thread and long poll), the run's model an MLP 4-8-3
# on 16 synthetic examples per client, one local step a round, no server-side evaluation.
# Mutual TLS by default (one certificate per client, issued by `fedload issue`); TLS=0 runs
# fedcoord --insecure with the clients' names as metadata.
# While it runs, the coordinator's resident memory, peak (VmHWM), threads and descriptors are
# sampled from /proc every 0.5 s, its round from the metrics endpoint (fl_round). Prints the
# registration time and a row per round; writes $out/samples.csv and $out/rounds.csv.
# Exits 0 when all ROUNDS rounds were committed and every fedload client heard "done", else 1
# (with the distinct errors and warnings of the clients and the coordinator, counted).
# Usage: scripts/bench_load.sh [build-dir]
#   CLIENTS=1000 ROUNDS=3 PER_PROC=250 TLS=1 HEARTBEAT_MS=5000 POLL_WAIT_MS=5000 MAX_THREADS=
#   RAMP_PER_S=0 ROUND_DEADLINE_S=300 TIMEOUT_S=900 LOAD_OUT=out/bench_load LOAD_PORT=50195
#   LOAD_METRICS_PORT=9595 LOAD_DB=$LOAD_OUT/db (fedcoord's --data-dir; removed first)
#   LOAD_PKI=$LOAD_OUT/pki (kept when outside LOAD_OUT: certificates already there are reused)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
out=${LOAD_OUT:-out/bench_load}
clients=${CLIENTS:-1000}
rounds=${ROUNDS:-3}
per_proc=${PER_PROC:-250}
tls=${TLS:-1}
heartbeat_ms=${HEARTBEAT_MS:-5000}
poll_wait_ms=${POLL_WAIT_MS:-5000}
ramp=${RAMP_PER_S:-0}
deadline_s=${ROUND_DEADLINE_S:-300}
timeout_s=${TIMEOUT_S:-900}
port=${LOAD_PORT:-50195}
mport=${LOAD_METRICS_PORT:-9595}
rm -rf "$out" "${LOAD_DB:-$out/db}"
mkdir -p "$out"

security=(--insecure)
client_security=(--insecure)
if [ "$tls" = 1 ]; then
  pki=${LOAD_PKI:-$out/pki}
  "$bin/fedload" issue --pki "$pki" --clients "$clients" > "$out/issue.log"
  cat "$out/issue.log"
  security=(--tls-ca "$pki/ca.crt" --tls-cert "$pki/coordinator.crt" --tls-key "$pki/coordinator.key")
  client_security=(--pki "$pki")
fi
extra=()
if [ -n "${MAX_THREADS:-}" ]; then extra+=(--max-threads "$MAX_THREADS"); fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/fedcoord" --listen "127.0.0.1:$port" "${security[@]}" --data-dir "${LOAD_DB:-$out/db}" --run-id load \
  --model mlp --hidden 8 --input-shape 4 --num-classes 3 --rounds "$rounds" --min-clients "$clients" \
  --local-steps 1 --batch-size 8 --lr 0.05 --seed 1 --eval-dataset none --local-eval-every 0 \
  --heartbeat-ms "$heartbeat_ms" --liveness-timeout-s $((heartbeat_ms * 6 / 1000 + 30)) \
  --registration-timeout-s "$timeout_s" --round-deadline-s "$deadline_s" --finish-grace-s 15 --threads 1 \
  --metrics-listen "127.0.0.1:$mport" "${extra[@]}" > "$out/fedcoord.out" 2> "$out/fedcoord.log" &
coord=$!
pids+=("$coord")
for _ in $(seq 1 100); do  # listening (the metrics endpoint comes up first)
  grep -q "listening on" "$out/fedcoord.log" 2>/dev/null && break
  kill -0 "$coord" 2>/dev/null || break
  sleep 0.1
done

start=$(date +%s.%N)
procs=$(( (clients + per_proc - 1) / per_proc ))
loaders=()
for p in $(seq 0 $((procs - 1))); do
  first=$((p * per_proc))
  n=$(( clients - first < per_proc ? clients - first : per_proc ))
  "$bin/fedload" --coordinator "127.0.0.1:$port" "${client_security[@]}" --clients "$n" --first "$first" \
    --state-dir "$out/clients" --poll-wait-ms "$poll_wait_ms" --ramp-per-s "$ramp" --timeout-s "$timeout_s" \
    > "$out/fedload-$p.out" 2> "$out/fedload-$p.log" &
  pids+=("$!")
  loaders+=("$!")
done

# shellcheck source=scripts/lib/metrics.sh
. "$(dirname "$0")/lib/metrics.sh"   # scrape PORT, metric_value NAME BODY
# A field of /proc/PID/status in kB (0 once the process is gone or a zombie, which has no VmRSS).
status_kb() { local v; v=$(awk -v k="$1:" '$1 == k { print $2 }' "/proc/$2/status" 2>/dev/null || true); echo "${v:-0}"; }
# CPU seconds (user + system) the process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }

echo "t_s,round,registered,rss_kb,hwm_kb,threads,fds,load_rss_kb,load_threads,cpu_s,load_cpu_s" > "$out/samples.csv"
while kill -0 "$coord" 2>/dev/null; do
  body=$(scrape "$mport" 2>/dev/null || true)
  r=$(metric_value 'fl_round{run="load"}' "$body")
  reg=$(metric_value 'fl_registered_clients{run="load"}' "$body")
  lrss=0
  lthreads=0
  lcpu=0
  for l in "${loaders[@]}"; do
    lcpu=$(awk -v a="$lcpu" -v b="$(cpu_s "$l")" 'BEGIN { printf "%.2f", a + b }')
    lrss=$((lrss + $(status_kb VmRSS "$l")))
    lthreads=$((lthreads + $(status_kb Threads "$l")))
  done
  fds=$( (ls "/proc/$coord/fd" 2>/dev/null || true) | wc -l)
  now=$(date +%s.%N)
  echo "$(awk -v a="$now" -v b="$start" 'BEGIN { printf "%.2f", a - b }'),${r:-0},${reg:-0},$(status_kb VmRSS "$coord"),$(status_kb VmHWM "$coord"),$(status_kb Threads "$coord"),$fds,$lrss,$lthreads,$(cpu_s "$coord"),$lcpu" >> "$out/samples.csv"
  # Every client gone (done, or failed): the coordinator gets its finish grace, then is stopped.
  alive=0
  for l in "${loaders[@]}"; do kill -0 "$l" 2>/dev/null && alive=1; done
  if [ "$alive" = 0 ]; then
    gone=${gone:-$now}
    if awk -v a="$now" -v b="$gone" 'BEGIN { exit !(a - b > 25) }'; then kill "$coord" 2>/dev/null || true; fi
  fi
  sleep 0.5
done
status=0
wait "$coord" || status=$?
# The coordinator is gone: clients still trying get 30 s to notice, then a SIGTERM (they stop).
for _ in $(seq 1 60); do
  alive=0
  for l in "${loaders[@]}"; do kill -0 "$l" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.5
done
for l in "${loaders[@]}"; do kill "$l" 2>/dev/null || true; done
for p in "${loaders[@]}"; do wait "$p" || status=1; done
trap - EXIT INT TERM

python3 - "$out" "$clients" "$rounds" "$procs" "$tls" "$start" "$status" <<'EOF'
import collections, csv, re, sys, time, datetime
out, clients, rounds, procs, tls, start, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", float(sys.argv[6]), int(sys.argv[7])
log = open(f"{out}/fedcoord.log", errors="replace").read()
def stamp(s):  # the log's local time -> epoch seconds
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f").timestamp()
line = r"\[([\d-]+ [\d:.]+)\] \[fedcoord\] \[\w+\] "
reg = re.search(line + r".*registered as #%d " % (clients - 1), log)
reg_s = stamp(reg.group(1)) - start if reg else float("nan")
first_reg = re.search(line + r".*registered as #0 ", log)
rows = []
for t, r, ok, dropped, wall in re.findall(line + r"\[[^\]]*\] round (\d+)/\d+: clients (\d+) \(dropped (\d+)\).*\(([\d.]+)s\)", log):
    rows.append((int(r), int(ok), int(dropped), float(wall), stamp(t) - start))
samples = list(csv.DictReader(open(f"{out}/samples.csv")))
num = lambda s, k: float(s[k] or 0)
def during(t0, t1):
    return [s for s in samples if t0 <= num(s, "t_s") <= t1]
peak_mb = max((num(s, "hwm_kb") for s in samples), default=0) / 1024
print(f"bench_load: {clients} clients in {procs} fedload process(es), {'mutual TLS' if tls else 'INSECURE (no TLS)'}, "
      f"mlp 4-8-3, 1 local step, {rounds} rounds")
print(f"bench_load: registration: all {clients} in {reg_s:.1f} s after the clients started"
      + (f" (first at {stamp(first_reg.group(1)) - start:.1f} s)" if first_reg else ""))
with open(f"{out}/rounds.csv", "w") as f:
    f.write("round,clients,dropped,round_s,period_s,rss_mb,peak_mb,threads_max,fds_max,coord_cpu,load_cpu\n")
    print(f"{'round':>5} {'clients':>7} {'dropped':>7} {'round_s':>8} {'period_s':>8} {'rss_MB':>7} {'peak_MB':>7} {'threads':>7} {'fds':>6} {'coord_cpu':>9} {'load_cpu':>8}")
    prev = reg_s
    for r, ok, dropped, wall, at in rows:
        ss = during(prev, at + 0.6) or during(at - 1, at + 1)
        rss = max((num(s, "rss_kb") for s in ss), default=0) / 1024
        hwm = max((num(s, "hwm_kb") for s in ss), default=0) / 1024
        thr = max((num(s, "threads") for s in ss), default=0)
        fds = max((num(s, "fds") for s in ss), default=0)
        period = at - prev
        # The coordinator's CPU over the round, in cores (CPU seconds / wall seconds; 2 cores here).
        # (a fedload process that ended reads 0: its share is counted while it ran)
        rate = lambda k: (num(ss[-1], k) - num(ss[0], k)) / max(num(ss[-1], "t_s") - num(ss[0], "t_s"), 1e-9) if len(ss) > 1 else float("nan")
        cpu, lcpu = rate("cpu_s"), rate("load_cpu_s")
        lcpu = lcpu if lcpu >= 0 else float("nan")
        print(f"{r:>5} {ok:>7} {dropped:>7} {wall:>8.1f} {period:>8.1f} {rss:>7.0f} {hwm:>7.0f} {thr:>7.0f} {fds:>6.0f} {cpu:>9.2f} {lcpu:>8.2f}")
        f.write(f"{r},{ok},{dropped},{wall:.2f},{period:.2f},{rss:.0f},{hwm:.0f},{thr:.0f},{fds:.0f},{cpu:.2f},{lcpu:.2f}\n")
        prev = at
if samples:
    mx = lambda k: max(num(s, k) for s in samples)
    print(f"bench_load: coordinator peak RSS {peak_mb:.0f} MB, at most {mx('threads'):.0f} threads and {mx('fds'):.0f} fds; "
          f"fedload processes together at most {mx('load_rss_kb') / 1024:.0f} MB and {mx('load_threads'):.0f} threads")
if len(rows) >= 4:  # memory across rounds: least-squares trend of the per-round RSS after round 2
    ys = [float(x.split(",")[5]) for x in open(f"{out}/rounds.csv").read().split("\n")[1:] if x][2:]
    n = len(ys); xs = list(range(n))
    if n >= 2:
        mxs, mys = sum(xs) / n, sum(ys) / n
        slope = sum((x - mxs) * (y - mys) for x, y in zip(xs, ys)) / sum((x - mxs) ** 2 for x in xs)
        print(f"bench_load: RSS after round 3..{rows[-1][0]}: {min(ys):.0f}..{max(ys):.0f} MB, trend {slope:+.2f} MB/round")
# What went wrong, counted: clients' failures and warnings, the coordinator's warnings.
def counted(text, pat, strip):
    c = collections.Counter(re.sub(strip, "#", m) for m in re.findall(pat, text))
    return c.most_common(6)
loads = "".join(open(f"{out}/fedload-{p}.log", errors="replace").read() for p in range(procs))
outs = "".join(open(f"{out}/fedload-{p}.out", errors="replace").read() for p in range(procs))
for what, n in counted(loads, r"\[(?:warning|error)\] (?:\[[^\]]*\] )?(.*)", r"\d+(\.\d+)?"):
    print(f"bench_load: clients logged {n}x: {what[:200]}")
for m in re.findall(r"fedload: \d+ client\(s\) failed: .*", loads):
    print(f"bench_load: {m[:300]}")
for what, n in counted(log, r"\[(?:warning|error)\] (?:\[[^\]]*\] )?(.*)", r"\d+(\.\d+)?"):
    print(f"bench_load: fedcoord logged {n}x: {what[:200]}")
finished = sum(int(x) for x in re.findall(r"finished=(\d+)", outs))
print(f"bench_load: {len(rows)}/{rounds} rounds committed, {finished}/{clients} clients heard 'done'"
      + ("" if status == 0 else f" (a process failed: exit {status})"))
sys.exit(0 if status == 0 and len(rows) == rounds and finished == clients else 1)
EOF
