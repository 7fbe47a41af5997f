#!/usr/bin/env bash
# Regenerates the measured parts of README.md — the example defmt log, the instruction
# counts per step and the binary sizes — from the release ELFs, so that they cannot
# drift from the code. Each part sits between `<!-- figures:NAME -->` and
# `<!-- /figures -->` in README.md and is replaced whole.
#
#   ./readme-figures.sh           rewrite README.md
#   ./readme-figures.sh --check   exit 1 (and show the diff) if README.md is stale
#
# Needs the ELFs (cargo build --release; cargo build-m0; the thumbv7em-none-eabi and
# thumbv8m.main-none-eabihf QEMU builds: scripts/test.sh makes them all), QEMU,
# defmt-print and llvm-size. Counts are exact and repeatable (QEMU icount plugin).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
check=0
[[ "${1:-}" == --check ]] && check=1
for tool in qemu-system-arm defmt-print llvm-size python3; do
    command -v "$tool" >/dev/null || { echo "readme-figures.sh: needs $tool" >&2; exit 2; }
done
t=target
elf() { local e="$t/$1/release/$2"; [[ -f "$e" ]] || { echo "readme-figures.sh: missing $e (build it first)" >&2; exit 2; }; echo "$e"; }
m4="$(elf thumbv7em-none-eabihf qemu)"
m0="$(elf thumbv6m-none-eabi qemu)"
stm="$(elf thumbv7em-none-eabi qemu)"
m33="$(elf thumbv8m.main-none-eabihf qemu)"
board="$(elf thumbv7em-none-eabihf board)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

# The defmt log of a default run (decoded), trimmed to its first and last lines.
./run-qemu.sh --defmt-out "$tmp/log.defmt" --no-decode "$m4" > /dev/null 2>&1
defmt-print -e "$m4" < "$tmp/log.defmt" 2>/dev/null | sed 's/ *$//' > "$tmp/log.txt"
{
    echo '```text'
    head -n 4 "$tmp/log.txt"
    echo '...'
    tail -n 4 "$tmp/log.txt"
    echo '```'
} > "$tmp/log.md"

# Instructions per step: means per prompt / generated token.
means() { # elf args... -> "prompt generated"
    local e="$1"; shift
    ./icount-per-token.sh --elf "$e" "$@" | awk '/^prompt:/ { p = $5 } /^generated:/ { g = $5 } END { print p, g }'
}
{
    echo "| firmware, machine | run | prompt tokens (mean) | generated tokens (mean) |"
    echo "| --- | --- | ---: | ---: |"
    for row in "M4F (demo int8), mps2-an386|$m4|record=0|\`record=0\` (no hooks)" \
               "M4F (demo int8), mps2-an386|$m4|probe=none|\`probe=none\` (recorder, token frames only)" \
               "M4F (demo int8), mps2-an386|$m4||default probes, ring (patterns, head results as f16, logits)" \
               "M4F (demo int8), mps2-an386|$m4|sink=direct|default probes, written from inside the step" \
               "STM32F405 (demo int8, soft-float ABI), netduinoplus2|$stm|record=0|\`record=0\`" \
               "Cortex-M33 (demo int8, DSP), mps2-an505|$m33|record=0|\`record=0\`" \
               "Cortex-M0 (attn1_ln int8, soft-float), microbit|$m0|record=0|\`record=0\`"; do
        IFS='|' read -r what e args label <<< "$row"
        # shellcheck disable=SC2086
        read -r p g < <(means "$e" $args)
        printf '| %s | %s | %s | %s |\n' "$what" "$label" "$(printf "%'d" "$p")" "$(printf "%'d" "$g")"
    done
} > "$tmp/icount.md"

# Sizes (berkeley: text = code + read-only data including the blob).
{
    echo "| binary | target (machine / board) | text | data | bss |"
    echo "| --- | --- | ---: | ---: | ---: |"
    for row in "qemu|thumbv7em-none-eabihf (mps2-an386)|$m4" "qemu|thumbv7em-none-eabi (netduinoplus2)|$stm" \
               "qemu|thumbv8m.main-none-eabihf (mps2-an505)|$m33" "qemu|thumbv6m-none-eabi (microbit)|$m0" \
               "board|thumbv7em-none-eabihf (nRF52840-DK)|$board"; do
        IFS='|' read -r name target e <<< "$row"
        read -r text data bss _ < <(llvm-size "$e" | tail -n 1)
        printf '| %s | %s | %s | %s | %s |\n' "$name" "$target" "$(printf "%'d" "$text")" "$(printf "%'d" "$data")" "$(printf "%'d" "$bss")"
    done
} > "$tmp/sizes.md"

python3 - README.md "$tmp" "$check" <<'EOF'
import re, sys, difflib
path, tmp, check = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
old = open(path).read()
new = old
for name in ["log", "icount", "sizes"]:
    body = open(f"{tmp}/{name}.md").read()
    pat = re.compile(r"(<!-- figures:%s -->\n).*?(<!-- /figures -->)" % name, re.S)
    if not pat.search(new):
        sys.exit(f"readme-figures.sh: no <!-- figures:{name} --> section in {path}")
    new = pat.sub(lambda m: m.group(1) + body + m.group(2), new)
if check:
    if new != old:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path + " (measured)"))
        sys.exit("readme-figures.sh: README.md figures are stale: run ./readme-figures.sh")
    print("readme-figures.sh: README.md figures are current")
else:
    open(path, "w").write(new)
    print("readme-figures.sh: README.md updated" if new != old else "readme-figures.sh: README.md already current")
EOF
