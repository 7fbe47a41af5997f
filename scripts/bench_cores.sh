#!/usr/bin/env bash
# Per-core figures under QEMU (issue 16): executed guest instructions per generated
# token and per weight multiply-accumulate, int8 weights, on every core the firmware
# runs on, counted exactly by the icount TCG plugin (scripts/qemu/icount.c).
#
#   scripts/bench_cores.sh        (after the firmware builds of scripts/test.sh)
#
# For each core: the QEMU example firmware with its embedded int8 blob (the demo model;
# the Cortex-M0's 16 KiB micro:bit holds the 1-layer fixture instead), the firmware's
# default prompt, 8 greedy tokens, no recorder (`record=0`: inference alone); the mean
# instructions per generated token, and that divided by the step's matrix MACs (W_Q,
# W_K, W_V, W_O of every layer and W_U: the step's whole cost per weight MAC, attention,
# layer norms and the greedy choice included). Then, where the kernel self-test firmware
# runs (firmware-examples/kernels: DSP on M4F/M7/M33, Helium on M55), the int8
# matrix-vector kernel alone per weight MAC over one demo step's products (7 products of
# 64x64 and 8 of 64x16, marker overhead subtracted), as in BENCHMARKS.md.
# QEMU counts instructions, not cycles: the M7 runs the M4F's code, so its counts are
# the M4F's (its dual issue is not modelled).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fw="$root/firmware-examples"
tl="${TINYLENS:-$root/target/debug/tinylens}"
[[ -x "$tl" ]] || tl="$root/target/release/tinylens"
[[ -x "$tl" ]] || { echo "bench_cores.sh: build the CLI first (cargo build -p tinylens-host --bin tinylens)" >&2; exit 2; }

# label | ELF (under firmware-examples/target) | machine | kernels ELF or -
cores=(
  "Cortex-M0 (microbit)|thumbv6m-none-eabi/release/qemu|microbit|-"
  "Cortex-M4F (mps2-an386)|thumbv7em-none-eabihf/release/qemu|mps2-an386|thumbv7em-none-eabihf/release/kernels"
  "Cortex-M7 (mps2-an500)|thumbv7em-none-eabihf/release/qemu|mps2-an500|thumbv7em-none-eabihf/release/kernels"
  "Cortex-M33 (mps2-an505)|thumbv8m.main-none-eabihf/release/qemu|mps2-an505|thumbv8m.main-none-eabihf/release/kernels"
  "Cortex-M55 + Helium (mps3-an547)|cortex-m55/thumbv8m.main-none-eabihf/release/qemu|mps3-an547|cortex-m55/thumbv8m.main-none-eabihf/release/kernels"
  "RV32IMAC (riscv32 virt)|riscv32imac-unknown-none-elf/release/qemu|virt|-"
)

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

# Matrix MACs per token of a blob.
macs_of_blob() {
    "$tl" info --json "$1" | python3 -c '
import json, sys
c = json.load(sys.stdin)["config"]
L, H, D, dh, V = c["n_layers"], c["n_heads"], c["d_model"], c["d_head"], c["d_vocab_out"]
print(L * 4 * H * dh * D + D * V)'
}
# The blob the firmware embeds (firmware-examples/fw/build.rs: the fixture on thumbv6m,
# the demo elsewhere, unless built with TINYLENS_MODEL).
blob_for_machine() {
    if [[ "$1" == microbit ]]; then echo "$fw/models/attn1_ln-int8.tlm"; else echo "$root/models/demo/demo-int8.tlm"; fi
}

printf '| core | model | instructions / generated token | / weight MAC (whole step) | int8 kernel / weight MAC |\n'
printf '|---|---|---:|---:|---:|\n'
for entry in "${cores[@]}"; do
    IFS='|' read -r label elf machine kernels <<<"$entry"
    elf="$fw/target/$elf"
    if [[ ! -f "$elf" ]]; then echo "| $label | (no build: $elf) | | | |"; continue; fi
    blob="$(blob_for_machine "$machine")"
    macs="$(macs_of_blob "$blob")"
    per_token="$("$fw/icount-per-token.sh" --machine "$machine" --elf "$elf" generate=8 record=0 \
        | sed -n 's/^generated: [0-9]* tokens, mean \([0-9]*\) instructions.*/\1/p')"
    kernel="—"
    if [[ "$kernels" != - && -f "$fw/target/$kernels" ]]; then
        "$fw/run-qemu.sh" --machine "$machine" --no-decode --icount="$tmp/ic" "$fw/target/$kernels" > "$tmp/k" 2>/dev/null
        kernel="$(python3 - "$tmp/k" "$tmp/ic" <<'PY'
import re, sys
labels = {}
for line in open(sys.argv[1]):
    m = re.match(r"region (\d+) (\S+) macs=(\d+)", line)
    if m:
        labels[int(m.group(1))] = m.group(2)
marks = {}
for line in open(sys.argv[2]):
    p = line.split()
    if p and p[0] == "mark":
        marks[int(p[1])] = int(p[2])
cost = {labels[n]: marks[2 * n] - marks[2 * n - 1] for n in labels if 2 * n in marks}
empty = cost["empty"]
def one(shape):
    for k, v in cost.items():
        if k.endswith(shape) and ("int8_dsp" in k or "int8_mve" in k):
            return v - empty
    raise SystemExit("no vector int8 region for " + shape)
total = 7 * one("_64x64") + 8 * one("_64x16")
print(f"{total / 36864:.2f}")
PY
)"
    fi
    name="$(basename "$blob" .tlm)"
    python3 -c "print(f'| $label | $name | {int($per_token):,} | {int($per_token)/$macs:.2f} | $kernel |')"
done
echo
echo "(load: $(uptime | sed 's/.*load average: //'); counts do not depend on it)"
