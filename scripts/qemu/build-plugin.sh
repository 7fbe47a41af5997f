#!/usr/bin/env bash
# Builds the instruction-counting QEMU TCG plugin into target/qemu-icount/libicount.so
# (relative to the repository root, or to $1 when given). Needs gcc (or $CC).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
outdir="${1:-$root/target/qemu-icount}"
mkdir -p "$outdir"
"${CC:-gcc}" -std=c11 -O2 -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden \
    -o "$outdir/libicount.so" "$here/icount.c"
echo "$outdir/libicount.so"
