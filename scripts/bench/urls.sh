#!/usr/bin/env bash
# Does the urls pipeline overlap fetching with computing? Three jobs over the same COUNT files of SIZE MiB,
# served by scripts/serve.py on 127.0.0.1 with DELAY seconds of latency per request:
#   fetch    the urls job with the `noop` task: fetching alone
#   compute  a glob job over the same files on local disk with the CPU-heavy task: computing alone
#   both     the urls job with the CPU-heavy task: the pipeline
# The CPU-heavy task is `grep` with a pattern of Unicode classes (about 160 MB/s per worker on random bytes here;
# `sha256` runs at about 1 GB/s with the SHA extensions, too fast to show anything). Each runs REPEAT times, interleaved; the medians are reported with both ratios: both / max(fetch, compute)
# (1.0 = perfect overlap) and both / (fetch + compute) (1.0 = no overlap at all).
# Usage: scripts/bench/urls.sh [REPEAT] [COUNT] [SIZE_MIB] [DELAY_S] [CONCURRENCY]
#        (from any folder; builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=${1:-5}
count=${2:-96}
size_mib=${3:-4}
delay=${4:-0.2}
concurrency=${5:-8}
cargo build --release -q
supervisor=$PWD/target/release/supervisor
work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/files"
for i in $(seq "$count"); do
    head -c "$((size_mib << 20))" /dev/urandom >"$work/files/f$i.bin"
done
python3 scripts/serve.py "$work/files" --port-file "$work/port" --delay "$delay" &
server_pid=$!
for _ in $(seq 100); do [[ -s $work/port ]] && break; sleep 0.05; done
port=$(cat "$work/port")
for i in $(seq "$count"); do echo "http://127.0.0.1:$port/f$i.bin"; done >"$work/urls.txt"

urls_input="urls = \"urls.txt\"
fetch_concurrency = $concurrency"
printf '[input]\n%s\n[task]\nbuiltin = "noop"\n' "$urls_input" >"$work/fetch.toml"
heavy='builtin = "grep"
args = { pattern = "\\p{L}{8}[0-9]\\p{Greek}" }'
printf '[input]\nglob = "files/*.bin"\n[task]\n%s\n' "$heavy" >"$work/compute.toml"
printf '[input]\n%s\n[task]\n%s\n' "$urls_input" "$heavy" >"$work/both.toml"

# Warm the page cache (the compute job reads the files from it; the server too).
cat "$work"/files/*.bin >/dev/null
for _ in $(seq "$repeat"); do
    for job in fetch compute both; do
        "$supervisor" run --quiet --json "$work/$job.toml" |
            python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["ok"] == d["items"], d; print(d["wall_s"])' \
                >>"$work/$job.times"
    done
done

python3 - "$work" "$count" "$size_mib" "$delay" "$concurrency" <<'PY'
import statistics, sys, os
work, count, size_mib, delay, concurrency = sys.argv[1:]
median = {}
print(f"{count} files of {size_mib} MiB, {delay} s latency per request, fetch_concurrency {concurrency}")
print(f"{'job':8} {'median s':>9} {'min s':>7} {'max s':>7}")
for job in ("fetch", "compute", "both"):
    walls = [float(line) for line in open(os.path.join(work, f"{job}.times"))]
    median[job] = statistics.median(walls)
    print(f"{job:8} {median[job]:9.3f} {min(walls):7.3f} {max(walls):7.3f}")
longer = max(median["fetch"], median["compute"])
total = median["fetch"] + median["compute"]
print(f"both / max(fetch, compute) = {median['both'] / longer:.2f}   (1.00 = fully overlapped)")
print(f"both / (fetch + compute)   = {median['both'] / total:.2f}   (1.00 = not overlapped at all)")
PY
