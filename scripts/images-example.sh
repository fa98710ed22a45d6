#!/usr/bin/env bash
# Runs examples/images.toml: serves the images of examples/data/images/ with scripts/serve.py on 127.0.0.1 (a
# free port), writes their URLs to examples/results/images-urls.txt, runs the job, and checks that every image
# has one thumbnail whose PNG header has the documented size (within 64×64, aspect ratio kept, shorter side
# rounded half up, at least 1; small images not enlarged) and that each record names its URL. Stops the server.
# Usage: scripts/images-example.sh [SUPERVISOR]   (default target/release/supervisor, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
supervisor=${1:-target/release/supervisor}
[[ -x $supervisor ]] || cargo build --release -q
images=examples/data/images
results=examples/results
size=64

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Width and height of a PNG, from its IHDR chunk (bytes 16..24, big-endian).
png_size() {
    local b
    read -r -a b < <(od -An -tu1 -j16 -N8 "$1")
    echo "$(((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3])) $(((b[4] << 24) | (b[5] << 16) | (b[6] << 8) | b[7]))"
}

mkdir -p "$results"
work=$(mktemp -d)
server=
cleanup() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

python3 scripts/serve.py "$images" --port-file "$work/port" &
server=$!
for _ in $(seq 200); do # up to 10 s for the server to listen
    [[ -s $work/port ]] && break
    kill -0 "$server" 2>/dev/null || fail "the server did not start"
    sleep 0.05
done
[[ -s $work/port ]] || fail "the server did not say its port"
port=$(cat "$work/port")

sources=("$images"/*.png)
{
    echo "# written by scripts/images-example.sh: the images of $images, served on 127.0.0.1:$port"
    for source in "${sources[@]}"; do echo "http://127.0.0.1:$port/$(basename "$source")"; done
} >"$results/images-urls.txt"

rm -rf "$results/images-thumbnails"
summary=$("$supervisor" run --quiet --json --force examples/images.toml)
echo "$summary"

records=0
while IFS= read -r line; do
    url=$(sed -n 's/.*"input":{"url":"\([^"]*\)"}.*/\1/p' <<<"$line")
    thumb=$(sed -n 's/.*"path":"\([^"]*\)"},"attempts".*/\1/p' <<<"$line")
    source=$images/${url##*/}
    [[ $url == "http://127.0.0.1:$port/"* && -f $source && -f $thumb && $thumb == */$results/images-thumbnails/* ]] ||
        fail "unexpected record: $line"
    read -r w h < <(png_size "$source")
    want="$w $h"
    if ((w > size || h > size)); then
        long=$((w > h ? w : h)) short=$((w > h ? h : w))
        short=$(((2 * short * size + long) / (2 * long)))
        ((short >= 1)) || short=1
        if ((w >= h)); then want="$size $short"; else want="$short $size"; fi
    fi
    got=$(png_size "$thumb")
    [[ $got == "$want" ]] || fail "thumbnail of $url is $got, expected $want"
    records=$((records + 1))
done <"$results/images.jsonl"
thumbs=("$results"/images-thumbnails/*.png)
((records == ${#sources[@]})) || fail "$records records for ${#sources[@]} images"
((${#thumbs[@]} == ${#sources[@]})) || fail "${#thumbs[@]} thumbnails for ${#sources[@]} images"
echo "ok: $records images fetched from 127.0.0.1:$port, each thumbnail of the expected size in its PNG header"
