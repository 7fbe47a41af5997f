#!/usr/bin/env bash
# Builds the QEMU firmware (Cortex-M0, microbit) with a GPTQ-calibrated int4 blob of the
# attn1_ln fixture (TransformerLens-trained, 1 layer; the M0's default model in int8)
# embedded, for tests/tests/firmware_qemu.rs (`*_calibrated_int4_*`):
#
#   1. <cli> convert --quant int4 --calibrate repeated (seed 0, the built-in repeated-
#      random-token set, 64 sequences; embeddings int8)
#      -> target/calibrated/attn1_ln-int4-calibrated.tlm
#   2. TINYLENS_MODEL=that cargo build --release -p tinylens-fw-qemu, in the target
#      directory target/calibrated (the default firmware build stays as it is).
#   3. the same with --int4-group 16 (blob format version 2; the DSP kernel's groups of
#      16) for the Cortex-M4F (mps2-an386): target/calibrated/attn1_ln-int4-g16-calibrated.tlm
#      and target/calibrated/thumbv7em-none-eabihf/release/qemu.
#
# About 15 s of CPU for each step with the debug CLI.
#
# usage: build-calibrated.sh [path/to/tinylens]   (default: <repo>/target/debug/tinylens)
# Prints the ELFs' paths.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cli="${1:-$root/target/debug/tinylens}"
out="$here/target/calibrated"
blob="$out/attn1_ln-int4-calibrated.tlm"
mkdir -p "$out"
# Written next to its final name and moved there: a failed run leaves no half blob.
fixture="$root/tests/fixtures/attn1_ln"
"$cli" convert --weights "$fixture/model.safetensors" --config "$fixture/config.json" --quant int4 --calibrate repeated \
    -o "$blob.tmp" >/dev/null
mv "$blob.tmp" "$blob"
cd "$here"
TINYLENS_MODEL="$blob" CARGO_TARGET_DIR="$out" \
    cargo build --release --quiet -p tinylens-fw-qemu --target thumbv6m-none-eabi
echo "$out/thumbv6m-none-eabi/release/qemu"
g16="$out/attn1_ln-int4-g16-calibrated.tlm"
cd "$root"
"$cli" convert --weights "$fixture/model.safetensors" --config "$fixture/config.json" --quant int4 \
    --int4-group 16 --calibrate repeated -o "$g16.tmp" >/dev/null
mv "$g16.tmp" "$g16"
cd "$here"
TINYLENS_MODEL="$g16" CARGO_TARGET_DIR="$out" \
    cargo build --release --quiet -p tinylens-fw-qemu --target thumbv7em-none-eabihf
echo "$out/thumbv7em-none-eabihf/release/qemu"
