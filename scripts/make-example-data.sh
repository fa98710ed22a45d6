#!/usr/bin/env bash
# Regenerates the data the example jobs read: examples/data/corpus.txt (about 300 KiB of English-like prose), the
# small files of examples/data/files/, and the small PNG images of examples/data/images/ (python3, standard library
# only). The output is committed, so the examples run without this script; run
# it only to change the data. It is deterministic: the words come from a fixed list, picked by a Park–Miller
# generator with fixed seeds, in plain awk arithmetic that is exact in doubles (mawk and gawk agree), so the same
# bytes come out on every machine.
set -euo pipefail
cd "$(dirname "$0")/.."

data=examples/data
mkdir -p "$data/files"
export LC_ALL=C

# prose SEED MIN_BYTES: paragraphs of sentences, wrapped at 72 columns, until at least MIN_BYTES are written.
prose() {
    awk -v seed="$1" -v min_bytes="$2" '
    function next_random() { state = (state * 16807) % 2147483647; return state }
    function pick(n) { return next_random() % n }
    function emit(word,    len) {
        len = length(word)
        if (column > 0 && column + 1 + len > 72) { printf "\n"; bytes += 1; column = 0 }
        if (column > 0) { printf " "; bytes += 1; column += 1 }
        printf "%s", word; bytes += len; column += len
    }
    BEGIN {
        state = seed
        n = split("the a ship sea whale captain crew harbour wind storm island night morning light river " \
                  "stone road village market bread salt iron rope sail anchor map letter book lamp fire " \
                  "winter summer rain cloud bird horse field garden door window tower bell clock mill " \
                  "and but then while because although after before until when where so yet or " \
                  "was were is had has will would could might must should saw heard found kept made " \
                  "carried watched waited turned opened closed followed remembered answered called " \
                  "old young long short dark bright cold warm quiet loud slow quick heavy empty full " \
                  "of in on under over through across beside beyond toward from with without into " \
                  "he she they we it his her their our its every each no some many few " \
                  "error warning notice always never again already almost still only even once", words, " ")
        paragraph_left = 3 + pick(6)
        while (bytes < min_bytes || paragraph_left > 0) {
            count = 5 + pick(12)
            for (i = 1; i <= count; i++) {
                word = words[1 + pick(n)]
                if (i == 1) word = toupper(substr(word, 1, 1)) substr(word, 2)
                if (i == count) word = word "."
                else if (i > 2 && pick(9) == 0) word = word ","
                emit(word)
            }
            if (--paragraph_left == 0) {
                printf "\n"; bytes += 1; column = 0
                if (bytes < min_bytes) { printf "\n"; bytes += 1; paragraph_left = 3 + pick(6) }
            }
        }
    }'
}

prose 20240601 307200 >"$data/corpus.txt"

# A handful of small files for the sha256 (glob) example: different seeds, different sizes.
names=(anchor bell harbour lamp river)
for i in "${!names[@]}"; do
    prose $((1000 + i)) $((400 + 900 * i)) >"$data/files/${names[$i]}.txt"
done

# A few PNG images of different shapes for the thumbnail example: colour gradients with a pattern, written with
# zlib and struct only (one IDAT chunk, filter 0 on every row).
mkdir -p "$data/images"
python3 - "$data/images" <<'PYTHON'
import struct, sys, zlib

def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

def png(path, width, height, channels, pixel):
    color_type = {3: 2, 4: 6}[channels]  # RGB or RGBA, 8 bits per sample
    rows = b"".join(b"\0" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)))
        out.write(chunk(b"IDAT", zlib.compress(rows, 9)))
        out.write(chunk(b"IEND", b""))

folder = sys.argv[1]
# Colours change in 16-pixel blocks so that the rows repeat and the files stay small (about 15 KB in all).
block = lambda v, n: (v // 16) * 255 // max(1, (n - 1) // 16)
png(f"{folder}/landscape.png", 640, 480, 3, lambda x, y: (block(x, 640), block(y, 480), 160 if (x // 80 + y // 80) % 2 else 40))
png(f"{folder}/portrait.png", 200, 600, 3, lambda x, y: (255 - block(y, 600), 96, block(x, 200)))
png(f"{folder}/banner.png", 1000, 150, 4, lambda x, y: (block(x, 1000), 200, block(y, 150), 255 if x < 500 else 128))
png(f"{folder}/icon.png", 100, 80, 4, lambda x, y: (255, block(x, 100), block(y, 80), 255 if (x // 10 - 5) ** 2 + (y // 10 - 4) ** 2 < 16 else 0))
PYTHON

echo "wrote $data/corpus.txt ($(wc -c <"$data/corpus.txt") bytes) and ${#names[@]} files in $data/files/, $(ls "$data/images" | wc -l) images in $data/images/"
