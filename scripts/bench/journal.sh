#!/usr/bin/env bash
# The journal's cost: items/s of the same job with the journal (default), with `[output] journal = false`
# (the same pipeline through a private staging file, never fsync'ed, not resumable), and without any results
# file. The variants run
# interleaved, REPEAT times each, and the median wall time of each is reported with the ratio to the no-journal
# run. Usage: scripts/bench/journal.sh [REPEAT]   (from any folder; builds the release binary first)
#
# `scripts/bench/journal.sh --resume-memory [RECORDS] [SUPERVISOR]` measures instead the peak RSS of `--resume`
# of a journal of RECORDS (default 20_000_000) noop records, written in interleaved batches as two workers
# would, with nothing left to run: recovery reads the whole journal, then finalize writes the whole results
# file. SUPERVISOR defaults to the release binary (built first). The results file is checked with `wc -l`.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ ${1:-} == --resume-memory ]]; then
    records=${2:-20000000}
    supervisor=${3:-}
    if [[ -z $supervisor ]]; then
        cargo build --release -q
        supervisor=$PWD/target/release/supervisor
    fi
    printf '[input]\nrange = { start = 0, end = %d }\n[task]\nbuiltin = "noop"\n[output]\nresults = "r.jsonl"\n' \
        "$records" >"$work/job.toml"
    # The journal's header (its fingerprint) comes from a real run, stopped as soon as it has written it.
    "$supervisor" run --quiet "$work/job.toml" >/dev/null 2>&1 &
    pid=$!
    until [[ -s $work/r.jsonl.journal ]] && head -c 100000 "$work/r.jsonl.journal" | grep -q $'\n'; do sleep 0.05; done
    kill -TERM "$pid" && wait "$pid" || true
    head -n 1 "$work/r.jsonl.journal" >"$work/header"
    python3 - "$work" "$records" <<'PY'
import sys
work, records = sys.argv[1], int(sys.argv[2])
batch = 4096
with open(f"{work}/r.jsonl.journal", "w") as out:
    out.write(open(f"{work}/header").read())
    starts = list(range(0, records, batch))
    # Two workers: each pair of batches finishes in reverse order.
    for pair in range(0, len(starts), 2):
        for start in reversed(starts[pair:pair + 2]):
            out.write("".join(
                f'{{"item":{i},"status":"ok","value":null,"attempts":1,"pid":1,"elapsed_ms":0.001,'
                f'"input":{{"start":{i},"end":{i + 1}}}}}\n'
                for i in range(start, min(start + batch, records))))
PY
    ls -l "$work/r.jsonl.journal" | awk '{printf "journal: %.0f MB, ", $5 / 1e6}'
    ${SUPERVISOR_WRAP:-} /usr/bin/time -v "$supervisor" run --quiet --json --resume "$work/job.toml" >"$work/summary" 2>"$work/time"
    lines=$(wc -l <"$work/r.jsonl")
    [[ $lines -eq $records ]] || { echo "results has $lines lines, expected $records" >&2; exit 1; }
    awk -F': ' '/Maximum resident set size/ {printf "peak RSS %.1f MB, ", $2 / 1024} /Elapsed \(wall clock\)/ {printf "wall %s, ", $2}' "$work/time"
    echo "results: $lines records (wc -l)"
    exit 0
fi

repeat=${1:-7}
cargo build --release -q
supervisor=$PWD/target/release/supervisor

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
