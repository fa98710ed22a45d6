#!/usr/bin/env bash
# supervisor against Python's process pools and the serial baseline, on the workloads of issue 5, in one run on
# this machine. Every configuration runs REPEAT times, interleaved, and reports the median; the summary prints
# ratios with the targets. Usage: scripts/bench/peers.sh [REPEAT] [--big]   (--big adds the 1 GiB line count)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=${1:-5}
big=${2:-}
cargo build --release -q
supervisor=$PWD/target/release/supervisor
peers=$PWD/scripts/bench/peers.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$work/measurements.jsonl

job() { # name, input line, task, extra lines
    printf '[input]\n%s\n[task]\nbuiltin = "%s"\n%s\n' "$2" "$3" "${4:-}" >"$work/$1.toml"
}
sup() { # label, job, extra flags...: records wall_s, items, first_result_s of one run
    local label=$1 name=$2
    shift 2
    local start end summary
    start=$(date +%s.%N)
    summary=$("$supervisor" run --quiet --json "$work/$name.toml" "$@")
    end=$(date +%s.%N)
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"measure": sys.argv[2], "wall_s": float(sys.argv[4]) - float(sys.argv[3]), "internal_s": d["wall_s"], "items": d["items"], "reduced": str(d["reduced"])}))' \
        "$summary" "$label" "$start" "$end" >>"$out"
}
py() { python3 "$peers" "$@" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); label="py:"+"/".join(str(a) for a in sys.argv[1:]); d["label"]=label; print(json.dumps(d))' "$@" >>"$out"; }

job noop-1m 'range = { start = 0, end = 1_000_000 }' noop
job noop-b1 'range = { start = 0, end = 20_000 }' noop '[workers]
batch = 1'
job seed 'range = { start = 0, end = 4_000_000, chunk = 1_000_000 }' sum-squares '[output]
reduce = "sum"'
job primes 'range = { start = 0, end = 2_000_000_000, chunk = 2_000_000 }' count-primes '[output]
reduce = "sum"'
job startup 'range = { start = 0, end = 2 }' noop
if [[ $big == --big ]]; then
    # (not `yes | head`: under pipefail, yes dying of SIGPIPE would fail the script)
    head -c 1G < <(yes 'the quick brown fox jumps over the lazy dog 0123456789 supervisor benchmark line') >"$work/big.txt"
    job lines "file = \"$work/big.txt\"" line-count '[output]
reduce = "sum"'
fi

for round in $(seq "$repeat"); do
    echo "round $round/$repeat" >&2
    sup process:noop-1m noop-1m --executor process
    sup thread:noop-1m noop-1m --executor thread
    sup serial:noop-1m noop-1m --executor serial
    py pool_map 1000000 0 fork
    py pool_map 20000 1 fork
    py executor_map 20000 1
    sup process:noop-b1 noop-b1 --executor process
    sup thread:noop-b1 noop-b1 --executor thread
    sup process:startup startup --executor process
    sup process-forkserver:startup startup --executor process --start forkserver
    py pool_startup fork
    py pool_startup spawn
    py pool_startup forkserver
    sup process:seed seed --executor process
    sup serial:seed seed --executor serial
    py seed 1000000 4 pool
    py seed 1000000 4 serial
    sup process:primes primes --executor process
    sup thread:primes primes --executor thread
    sup serial:primes primes --executor serial
    if [[ $big == --big ]]; then
        sup process:lines lines --executor process
        sup thread:lines lines --executor thread
        sup serial:lines lines --executor serial
        start=$(date +%s.%N); wc -l <"$work/big.txt" >/dev/null; end=$(date +%s.%N)
        python3 -c 'import json,sys; print(json.dumps({"measure": "wc -l", "wall_s": float(sys.argv[2]) - float(sys.argv[1])}))' "$start" "$end" >>"$out"
    fi
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    label = d.get("label") or d["measure"]
    rows.setdefault(label, []).append(d)
def med(label, key="wall_s"):
    return statistics.median(r[key] for r in rows[label])
def spread(label, key="wall_s"):
    values = [r[key] for r in rows[label]]
    return min(values), max(values)
print(f"{'configuration':42} {'median s':>10} {'min–max s':>17}")
for label in rows:
    low, high = spread(label)
    print(f"{label:42} {med(label):10.4f} {low:8.4f}–{high:.4f}")
def per_item_us(label, items, key="wall_s"):
    return med(label, key) / items * 1e6
print()
print("targets (issue 5), measured in this run:")
noop_p = 1e6 / med("process:noop-1m", "internal_s")
noop_t = 1e6 / med("thread:noop-1m", "internal_s")
pool_default = 1e6 / med("py:pool_map/1000000/0/fork")
print(f"- noop 1M auto: process {noop_p:,.0f} items/s = {noop_p / noop_t:.2f}x thread (target >= 0.5x), {noop_p / pool_default:.1f}x Pool.map default chunksize (target >= 5x)")
b1_p = per_item_us("process:noop-b1", 20000, "internal_s")
print(f"- noop batch=1: process {b1_p:.1f} us/item; Pool.map(chunksize=1) {per_item_us('py:pool_map/20000/1/fork', 20000):.1f} us/item ({per_item_us('py:pool_map/20000/1/fork', 20000) / b1_p:.2f}x, target >= 2x); ProcessPoolExecutor.map {per_item_us('py:executor_map/20000/1', 20000):.1f} us/item ({per_item_us('py:executor_map/20000/1', 20000) / b1_p:.2f}x, target >= 10x)")
start_p = med("process:startup")
print(f"- start-up to all workers ready (whole 2-item job): process {start_p * 1000:.1f} ms, forkserver {med('process-forkserver:startup') * 1000:.1f} ms; Python pool fork {med('py:pool_startup/fork') * 1000:.1f} ms, spawn {med('py:pool_startup/spawn') * 1000:.1f} ms ({med('py:pool_startup/spawn') / start_p:.1f}x, target >= 10x), forkserver {med('py:pool_startup/forkserver') * 1000:.1f} ms")
print(f"- seed sum(i*i) x4: supervisor process {med('process:seed') * 1000:.1f} ms, serial {med('serial:seed') * 1000:.1f} ms; Python fork pool {med('py:seed/1000000/4/pool') * 1000:.0f} ms, serial {med('py:seed/1000000/4/serial') * 1000:.0f} ms")
p, t, s = med("process:primes", "internal_s"), med("thread:primes", "internal_s"), med("serial:primes", "internal_s")
print(f"- count-primes: process {p:.3f} s vs thread {t:.3f} s ({(p / t - 1) * 100:+.1f}%, target within 5%); speedup vs serial {s / p:.2f}x (target >= 0.95 x cores)")
if "process:lines" in rows:
    p, t, s, w = med("process:lines", "internal_s"), med("thread:lines", "internal_s"), med("serial:lines", "internal_s"), med("wc -l")
    print(f"- 1 GiB line count: process {p:.3f} s ({1 / p:.2f} GiB/s), thread {t:.3f} s ({t / p:.2f}x of thread throughput, target >= 0.9x), serial {s:.3f} s, wc -l {w:.3f} s")
PY
