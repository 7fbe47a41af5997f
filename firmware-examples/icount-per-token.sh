#!/usr/bin/env bash
# Executed guest instructions per model step (= per token) of the QEMU firmware,
# counted exactly by the icount TCG plugin (scripts/qemu/icount.c).
#
# usage: icount-per-token.sh [--elf app.elf] [--tsv] [firmware-arg ...]
#
#   --elf ELF   firmware to run (default: target/thumbv7em-none-eabihf/release/qemu;
#               target/thumbv6m-none-eabi/release/qemu for the Cortex-M0 build)
#   --machine M QEMU machine (default: from the ELF, see run-qemu.sh; mps2-an500 runs
#               the thumbv7em-none-eabihf build on a Cortex-M7)
#   --tsv       only the per-position table, tab-separated, no summary
#   firmware-arg: as for run-qemu.sh, e.g. tokens=0,1,2 generate=16 probe=logits;
#               record=0 runs the steps without any recorder (the cost of inference
#               alone: no hook work, no trace frames)
#
# Prints one line per position (pos, prompt/generated, input token, greedy next token,
# instructions from the marker before the step to the marker after it: the forward
# pass, the greedy choice, and with recording the probes' frames including their
# encoding; each semihosting write counts as one instruction), then the mean, min and
# max per prompt token and per generated token. Counts are the same on every run.
# Needs qemu-system-arm, gcc (builds the plugin on first use), readelf, defmt-print
# (the per-step log lines name the positions).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

elf="$here/target/thumbv7em-none-eabihf/release/qemu"
tsv=0
machine=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --elf) elf="${2:?}"; shift 2 ;;
        --tsv) tsv=1; shift ;;
        --machine) machine=(--machine "${2:?}"); shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
[[ -f "$elf" ]] || { echo "icount-per-token.sh: no firmware at $elf (cd firmware-examples && cargo build --release)" >&2; exit 2; }
command -v defmt-print >/dev/null || { echo "icount-per-token.sh: needs defmt-print (cargo install defmt-print --locked)" >&2; exit 2; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
status=0
"$here/run-qemu.sh" "${machine[@]}" --icount="$tmp/icount" "$elf" "$@" > /dev/null 2> "$tmp/log" || status=$?
if [[ $status != 0 ]]; then
    cat "$tmp/log" >&2
    echo "icount-per-token.sh: the firmware failed (status $status)" >&2
    exit 1
fi

# Step log lines: "INFO  pos 3 prompt token 33 -> 7: ..." in step order; mark pairs
# (begin, end) in the same order.
awk -v tsv="$tsv" '
    FNR == NR { if ($1 == "mark") m[$2] = $3; if ($1 == "total") total = $2; next }
    {
        for (i = 1; i <= NF - 6; i++) if ($i == "pos" && $(i + 3) == "token" && $(i + 5) == "->") break
        if (i > NF - 6) next
        n++
        pos = $(i + 1); kind = $(i + 2); tok = $(i + 4); nxt = $(i + 6); sub(":", "", nxt)
        if (!((2 * n) in m)) { print "icount-per-token.sh: fewer marks than steps" > "/dev/stderr"; exit 1 }
        c = m[2 * n] - m[2 * n - 1]
        if (n == 1 && !tsv) print "pos\tkind\ttoken\tnext\tinstructions"
        print pos "\t" kind "\t" tok "\t" nxt "\t" c
        cnt[kind]++; sum[kind] += c
        if (!(kind in lo) || c < lo[kind]) lo[kind] = c
        if (!(kind in hi) || c > hi[kind]) hi[kind] = c
    }
    END {
        if (n == 0) { print "icount-per-token.sh: no step lines in the log" > "/dev/stderr"; exit 1 }
        if (tsv) exit 0
        split("prompt generated", kinds, " ")
        for (j = 1; j <= 2; j++) if ((k = kinds[j]) in cnt)
            printf "%s: %d tokens, mean %.0f instructions/token (min %d, max %d)\n",
                   k, cnt[k], sum[k] / cnt[k], lo[k], hi[k]
        printf "total: %d instructions for the whole run (boot, model check, steps, exit)\n", total
    }' "$tmp/icount" "$tmp/log"
