#!/usr/bin/env bash
# Per-item external commands: `supervisor run` with a `[task] command` against `xargs -P` and GNU parallel, the
# same N commands two at a time (one per vCPU here), every configuration REPEAT times, interleaved; prints the
# median commands per second of each and the ratios. GNU parallel is skipped with a message when it is not
# installed (`apt-get install -y parallel`). Usage: scripts/bench/commands.sh [REPEAT] [N] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=${1:-5}
n=${2:-2000}
jobs=${3:-2}
cargo build --release -q
supervisor=$PWD/target/release/supervisor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$work/measurements.txt

# The command is `true ITEM`: nothing but the cost of starting, running and reaping one process per item.
cat >"$work/true.toml" <<JOB
[input]
range = { start = 0, end = $n }
[task]
command = ["true", "{item}"]
[workers]
count = $jobs
JOB
# The same with a results file (the journal writes one record per item, with the captured output).
cat >"$work/true-results.toml" <<JOB
[input]
range = { start = 0, end = $n }
[task]
command = ["true", "{item}"]
[workers]
count = $jobs
[output]
results = "$work/results.jsonl"
JOB

measure() { # label, command...: appends "label seconds"
    local label=$1 start end
    shift
    start=$(date +%s.%N)
    "$@" >/dev/null
    end=$(date +%s.%N)
    echo "$label $(awk "BEGIN { print $end - $start }")" >>"$out"
}

have_parallel=1
if ! command -v parallel >/dev/null; then
    have_parallel=0
    echo "GNU parallel is not installed: skipping it (apt-get install -y parallel)" >&2
fi

for round in $(seq "$repeat"); do
    echo "round $round/$repeat" >&2
    measure supervisor "$supervisor" run --quiet --force "$work/true.toml"
    measure supervisor+results "$supervisor" run --quiet --force "$work/true-results.toml"
    measure "xargs-P$jobs" sh -c "seq 0 $((n - 1)) | xargs -P$jobs -n1 true"
    if ((have_parallel)); then
        measure "parallel-j$jobs" sh -c "seq 0 $((n - 1)) | parallel --will-cite -j$jobs true"
    fi
    measure serial-loop-bin-true sh -c "for i in \$(seq 0 $((n - 1))); do /bin/true \$i; done"
done

python3 - "$out" "$n" "$jobs" <<'PY'
import statistics, sys
path, n, jobs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for line in open(path):
    label, seconds = line.split()
    runs.setdefault(label, []).append(float(seconds))
print(f"{n} commands (`true ITEM`), {jobs} at a time, median of {len(next(iter(runs.values())))} runs")
print(f"  {'runner':<20} {'wall':>9} {'commands/s':>12}   min–max")
rate = {}
for label, times in runs.items():
    median = statistics.median(times)
    rate[label] = n / median
    print(f"  {label:<20} {median:>8.3f}s {rate[label]:>12.0f}   {min(times):.3f}–{max(times):.3f}s")
sup = rate["supervisor"]
for peer in [k for k in rate if k.startswith(("xargs", "parallel", "serial"))]:
    print(f"  supervisor / {peer}: {sup / rate[peer]:.2f}x")
PY
