#!/usr/bin/env bash
# The journal's cost: items/s of the same job with the journal (default), with `[output] journal = false`
# (the same pipeline through a private staging file, never fsync'ed, not resumable), and without any results
# file. The variants run
# interleaved, REPEAT times each, and the median wall time of each is reported with the ratio to the no-journal
# run. Usage: scripts/bench/journal.sh [REPEAT]   (from any folder; builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=${1:-7}
cargo build --release -q
supervisor=$PWD/target/release/supervisor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

job() { # name, input, task, output-extra
    printf '[input]\n%s\n[task]\nbuiltin = "%s"\n[output]\n%s\n' "$2" "$3" "$4" >"$work/$1.toml"
}
for base in noop:'range = { start = 0, end = 1_000_000 }':noop primes:'range = { start = 0, end = 400_000_000, chunk = 100_000 }':count-primes; do
    IFS=: read -r name input task <<<"$base"
    job "$name-journal" "$input" "$task" 'results = "r-journal.jsonl"'
    job "$name-plain" "$input" "$task" $'results = "r-plain.jsonl"\njournal = false'
    job "$name-none" "$input" "$task" ''
done

for name in noop primes; do
    for _ in $(seq "$repeat"); do
        for variant in journal plain none; do
            "$supervisor" run --quiet --json "$work/$name-$variant.toml" |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["wall_s"], d["items"])' >>"$work/$name-$variant.times"
        done
    done
done

python3 - "$work" <<'PY'
import statistics, sys, os
work = sys.argv[1]
print(f"{'job':8} {'variant':9} {'median s':>9} {'min s':>7} {'max s':>7} {'items/s':>11} {'vs plain':>9}")
for name in ("noop", "primes"):
    rows = {}
    for variant in ("journal", "plain", "none"):
        times = [tuple(map(float, line.split())) for line in open(os.path.join(work, f"{name}-{variant}.times"))]
        walls = [t for t, _ in times]
        rows[variant] = (statistics.median(walls), min(walls), max(walls), times[0][1])
    for variant, (median, low, high, items) in rows.items():
        ratio = median / rows["plain"][0]
        print(f"{name:8} {variant:9} {median:9.3f} {low:7.3f} {high:7.3f} {items / median:11.0f} {ratio:8.2f}x")
PY
