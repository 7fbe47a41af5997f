#!/usr/bin/env bash
# Builds the firmware examples and checks them in QEMU:
#  - both binaries build for thumbv7em-none-eabihf, the QEMU one for thumbv6m-none-eabi;
#  - the QEMU example exits 0 quickly on mps2-an386 (Cortex-M4F) and on microbit
#    (Cortex-M0, soft-float), and its trace (stdout) is byte for byte the trace of
#    `tinylens run` on the host for the same blob, prompt, probes, run id and generation,
#    with the defaults and with all hooks; `tinylens decode -` reads it from the pipe;
#  - bad arguments, a panicking build and a HardFault build exit 1 (never hang);
#  - instruction counts: two marks per step, the same on two runs; icount-per-token.sh.
# Needs: the two rustup targets, qemu-system-arm, gcc, readelf; builds the host CLI
# (../target/debug/tinylens). defmt-print optional.
# Ends with a "N passed, N failed" line; exit status 0 only if all passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

pass=0 fail=0
ok()  { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAILED: $*"; fail=$((fail + 1)); }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
v7=target/thumbv7em-none-eabihf/release
v6=target/thumbv6m-none-eabi/release
run() { ./run-qemu.sh --no-decode --defmt-out "$tmp/defmt" --timeout 20 "$@"; }

check "cargo build --release (qemu + board, thumbv7em)" cargo build --release --quiet
check "cargo build-m0 (qemu, thumbv6m)" cargo build-m0 --quiet
check "feature builds (demo-panic, demo-hardfault)" \
    cargo build --release --quiet -p tinylens-fw-qemu --target-dir target/demo-panic --features demo-panic
cargo build --release --quiet -p tinylens-fw-qemu --target-dir target/demo-hardfault --features demo-hardfault \
    || bad "demo-hardfault build"
# From the repository root: this folder's .cargo/config.toml cross-compiles.
check "host CLI builds (tinylens)" bash -c 'cd .. && cargo build --quiet -p tinylens-host --bin tinylens'
tinylens=../target/debug/tinylens

# The firmware's compiled-in defaults (fw/src/lib.rs, DEFAULT_*).
defaults=(--tokens 0,5,12,33,7,21,40,9,5,12,33 --generate 8 --run-id 1
          --probe 'blocks.*.attn.hook_pattern' --probe 'blocks.*.attn.hook_result:f16' --probe logits)

# same_as_host TRACE TINYLENS-RUN-ARGS...: some candidate blob, run on the host, gives
# exactly TRACE (which blob the firmware embeds: see fw/build.rs).
same_as_host() {
    local trace="$1"; shift
    for blob in ../models/demo/demo-int8.tlm models/*.tlm; do
        [[ -f "$blob" ]] || continue
        "$tinylens" run "$blob" "$@" --trace "$tmp/host.tlt" > /dev/null 2>&1 || continue
        if cmp -s "$trace" "$tmp/host.tlt"; then echo "    = tinylens run $blob"; return 0; fi
    done
    return 1
}

for elf in "$v7/qemu" "$v6/qemu"; do
    start=$(date +%s%N)
    run "$elf" > "$tmp/trace" 2> "$tmp/err"; rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    check "$elf exits 0 (${ms} ms)" test "$rc" = 0
    check "$elf finishes within 2 s" test "$ms" -lt 2000
    check "$elf wrote a defmt log" test -s "$tmp/defmt"
    check "$elf trace (defaults) is bit-exact with the host" same_as_host "$tmp/trace" "${defaults[@]}"
    run "$elf" probe=* tokens=0,3,9,27,4,8,3,9 generate=2 run=7 > "$tmp/trace" 2> "$tmp/err"
    check "$elf trace (probe=*, generate=2) is bit-exact with the host" same_as_host "$tmp/trace" \
        --tokens 0,3,9,27,4,8,3,9 --generate 2 --run-id 7 --probe '*'
    run "$elf" 2> /dev/null | "$tinylens" decode - -o "$tmp/cache.json" 2> "$tmp/decode"
    check "$elf | tinylens decode - (no loss)" \
        grep -q "19 positions, .* 0 bad frames, 0 lost frames, 0 duplicates, 0 missing records, 0 dropped on device$" "$tmp/decode"
done

run "$v7/qemu" generate=lots > "$tmp/trace" 2> "$tmp/err"; rc=$?
check "bad argument exits 1 with a message on stderr" \
    test "$rc" = 1 -a ! -s "$tmp/trace" -a "$(grep -c 'firmware error: bad argument `generate=lots`' "$tmp/err")" = 1
run "$v7/qemu" generate=1000 > /dev/null 2> "$tmp/err"; rc=$?
check "a run longer than the context exits 1" test "$rc" = 1
run target/demo-panic/thumbv7em-none-eabihf/release/qemu > /dev/null 2> "$tmp/err"; rc=$?
check "panicking firmware exits 1" test "$rc" = 1
check "panic message on stderr" grep -q "demo-panic: deliberate panic" "$tmp/err"
run target/demo-hardfault/thumbv7em-none-eabihf/release/qemu > /dev/null 2> "$tmp/err"; rc=$?
check "HardFault exits 1" test "$rc" = 1
check "HardFault report on stderr" grep -q "HardFault" "$tmp/err"

run --icount="$tmp/ic1" "$v7/qemu" generate=3 > /dev/null 2>&1
run --icount="$tmp/ic2" "$v7/qemu" generate=3 > /dev/null 2>&1
check "icount: 2 marks per step (14 positions) and a total" \
    test "$(grep -c '^mark' "$tmp/ic1")" = 28 -a "$(grep -c '^total' "$tmp/ic1")" = 1
check "icount: two runs give the same counts" cmp -s "$tmp/ic1" "$tmp/ic2"
if command -v defmt-print > /dev/null; then
    ./icount-per-token.sh record=0 > "$tmp/per-token" 2>&1
    check "icount-per-token.sh: 19 steps and a per-generated-token mean" \
        test "$(grep -c '^[0-9]' "$tmp/per-token")" = 19 -a "$(grep -c '^generated: 8 tokens, mean' "$tmp/per-token")" = 1
    sed -n '/^prompt:/,$p' "$tmp/per-token" | sed 's/^/    /'
fi

if command -v defmt-print > /dev/null && command -v llvm-size > /dev/null \
        && [[ -f target/thumbv7em-none-eabi/release/qemu && -f target/thumbv8m.main-none-eabihf/release/qemu ]]; then
    check "README.md figures (log, counts, sizes) match readme-figures.sh" ./readme-figures.sh --check
fi

echo "firmware-examples: $pass passed, $fail failed"
[[ $fail == 0 ]]
