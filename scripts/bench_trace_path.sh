#!/usr/bin/env bash
# Instructions per model step on the emulated Cortex-M4 (QEMU mps2-an386), counted
# exactly by the icount TCG plugin, for each way the trace can leave the chip: frames
# written into the trace ring (FrameRing) and drained between steps, against frames
# written to the transport from inside the step ("direct"), over semihosting and over
# the CMSDK UART; with probes off as the baseline. Prints a Markdown table.
#
#   scripts/bench_trace_path.sh [--elf app.elf]
#
# The firmware is the default QEMU build (firmware-examples, `cargo build --release`,
# the demo int8 blob when models/demo exists), run with the 16-token prompt of
# `tinylens bench` and bench_firmware.sh, then 16 greedy tokens (the whole context). A step's count runs from the marker before it to the marker
# after it (tinylens_fw::Stepper): the forward pass, the probes' frame encoding and,
# for the direct sinks, the transport writes (a semihosting write counts as one
# instruction; a UART byte costs the driver's register writes and status polls). The
# ring's drain runs between steps, outside the markers; its cost is in the "whole run"
# column. Counts are identical from run to run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fw="$root/firmware-examples"
elf="$fw/target/thumbv7em-none-eabihf/release/qemu"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --elf) elf="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_trace_path.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -f "$elf" ]] || (cd "$fw" && cargo build --release --quiet -p tinylens-fw-qemu)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
run_args=(tokens=0,63,4,35,13,31,4,45,2,39,27,32,15,62,20,50 generate=16)

# label|firmware args
cases=(
    "probes off|record=0"
    "hook_pattern, every head: ring → semihosting|probe=blocks.*.attn.hook_pattern sink=ring"
    "hook_pattern, every head: direct semihosting|probe=blocks.*.attn.hook_pattern sink=direct"
    "hook_pattern, every head: ring → UART|probe=blocks.*.attn.hook_pattern sink=ring transport=uart"
    "hook_pattern, every head: direct UART|probe=blocks.*.attn.hook_pattern sink=direct transport=uart"
    "firmware default: ring → UART|sink=ring transport=uart"
    "firmware default: direct UART|sink=direct transport=uart"
    "every hook: ring → UART (8 KiB ring, blocks when full)|probe=* sink=ring transport=uart"
    "every hook: ring → UART, drop when full|probe=* sink=ring overflow=drop transport=uart"
    "every hook: direct UART|probe=* sink=direct transport=uart"
)

echo "| probes: trace path | prompt instr/step | generated instr/step | × probes off (prompt / generated) | whole run | frames dropped |"
echo "|---|---:|---:|---:|---:|---:|"
base_p="" base_g=""
for c in "${cases[@]}"; do
    label="${c%%|*}"; read -r -a args <<< "${c#*|}"; args+=("${run_args[@]}")
    "$fw/run-qemu.sh" --serial "$tmp/uart" --defmt-out "$tmp/defmt" --icount="$tmp/icount" "$elf" "${args[@]}" \
        > "$tmp/trace" 2> "$tmp/log"
    "$fw/icount-per-token.sh" --elf "$elf" --tsv "${args[@]}" > "$tmp/steps"
    total="$(awk '$1 == "total" { print $2 }' "$tmp/icount")"
    dropped="$(sed -n 's/.*trace: .* records, \([0-9]*\) dropped.*/\1/p' "$tmp/log" | tail -1)"
    read -r p g < <(awk -F'\t' '$2 == "prompt" { sp += $5; np++ } $2 == "generated" { sg += $5; ng++ }
                              END { printf "%.0f %.0f\n", sp / np, sg / ng }' "$tmp/steps")
    if [[ -z "$base_p" ]]; then base_p=$p; base_g=$g; fi
    ratio="$(python3 -c "print(f'{$p / $base_p:.3f} / {$g / $base_g:.3f}')")"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" \
        "$(printf "%'d" "$p")" "$(printf "%'d" "$g")" "$ratio" "$(printf "%'d" "$total")" "${dropped:--}"
done
