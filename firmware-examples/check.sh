#!/usr/bin/env bash
# Builds the firmware examples and checks them in QEMU:
#  - both binaries build for thumbv7em-none-eabihf, the QEMU one for thumbv6m-none-eabi;
#  - the QEMU example exits 0 quickly on mps2-an386 and on microbit, and its trace
#    channel (stdout) carries exactly the bytes 0x00..0xFF (binary-clean);
#  - a panicking build and a HardFault build exit 1 (never hang);
#  - instruction counts are the same on two runs and the same for every placeholder step.
# Needs: the two rustup targets, qemu-system-arm, gcc, readelf. defmt-print optional.
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

python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)))' > "$tmp/pattern"
for elf in "$v7/qemu" "$v6/qemu"; do
    start=$(date +%s%N)
    run "$elf" steps=4 > "$tmp/trace" 2> "$tmp/err"; rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    check "$elf exits 0 (${ms} ms)" test "$rc" = 0
    check "$elf finishes within 2 s" test "$ms" -lt 2000
    check "$elf trace channel is binary-clean" cmp -s "$tmp/trace" "$tmp/pattern"
    check "$elf wrote a defmt log" test -s "$tmp/defmt"
done

run target/demo-panic/thumbv7em-none-eabihf/release/qemu > /dev/null 2> "$tmp/err"; rc=$?
check "panicking firmware exits 1" test "$rc" = 1
check "panic message on stderr" grep -q "demo-panic: deliberate panic" "$tmp/err"
run target/demo-hardfault/thumbv7em-none-eabihf/release/qemu > /dev/null 2> "$tmp/err"; rc=$?
check "HardFault exits 1" test "$rc" = 1
check "HardFault report on stderr" grep -q "HardFault" "$tmp/err"

run --icount="$tmp/ic1" "$v7/qemu" steps=5 > /dev/null 2>&1
run --icount="$tmp/ic2" "$v7/qemu" steps=5 > /dev/null 2>&1
check "icount: 10 marks and a total" test "$(grep -c '^mark' "$tmp/ic1")" = 10 -a "$(grep -c '^total' "$tmp/ic1")" = 1
check "icount: two runs give the same counts" cmp -s "$tmp/ic1" "$tmp/ic2"
costs="$(awk '$1 == "mark" { m[$2] = $3; n = $2 } END { for (i = 2; i <= n; i += 2) print m[i] - m[i-1] }' "$tmp/ic1" | sort -u)"
check "icount: every placeholder step costs the same ($costs)" test "$(echo "$costs" | wc -l)" = 1

echo "firmware-examples: $pass passed, $fail failed"
[[ $fail == 0 ]]
