#!/usr/bin/env bash
# The whole tinylens test suite, from a fresh machine: installs what it needs (cross
# targets, QEMU, Chromium, defmt-print), then runs every check CI runs.
#
#   ./scripts/test.sh
#
# Needs: rustup/cargo, and root or sudo for apt-get (Debian/Ubuntu). Ends with the
# summary line of the last test run; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "toolchain: targets and components"
installed_targets=$(rustup target list --installed)
for t in thumbv7em-none-eabihf thumbv6m-none-eabi thumbv7em-none-eabi thumbv8m.main-none-eabihf riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

step "system packages: QEMU (Cortex-M and RISC-V emulation), Chromium (report rendering), gcc, binutils"
missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v qemu-system-riscv32 >/dev/null || missing+=(qemu-system-misc)   # RISC-V virt
command -v chromium >/dev/null || missing+=(chromium)
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)   # report text in Chromium
command -v gcc >/dev/null || missing+=(gcc)
command -v readelf >/dev/null || missing+=(binutils)   # run-qemu.sh: machine, icount marker
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "defmt-print (decodes the firmware's defmt log)"
command -v defmt-print >/dev/null || cargo install defmt-print --locked --quiet

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The Python extension crate is its own workspace (see host-tools/python/Cargo.toml).
cargo fmt --manifest-path host-tools/python/Cargo.toml -- --check
CARGO_TARGET_DIR="$PWD/target" cargo clippy --manifest-path host-tools/python/Cargo.toml \
    --all-targets --quiet -- -D warnings

step "tinylens-core for the microcontroller targets (no_std, no alloc)"
cargo build -p tinylens-core --quiet --target thumbv7em-none-eabihf
cargo build -p tinylens-core --quiet --target thumbv7em-none-eabihf --features defmt,embedded-io,embedded-io-06
cargo build -p tinylens-core --quiet --target thumbv6m-none-eabi
cargo build -p tinylens-core --quiet --target riscv32imc-unknown-none-elf   # ESP32-C3

step "firmware examples (Cortex-M4F/M7, STM32F405, Cortex-M0, Cortex-M33, Cortex-M55, RISC-V), and the CLI the QEMU test pipes into"
# tests/tests/firmware_qemu.rs runs these ELFs in QEMU (qemu + board for thumbv7em-
# eabihf: mps2-an386; qemu for thumbv7em-eabi: netduinoplus2, thumbv6m: microbit,
# thumbv8m.main: mps2-an505; thumbv7em-eabihf also on mps2-an500; build-m55, target-cpu=
# cortex-m55 in target/cortex-m55: mps3-an547; riscv32imac: virt) and pipes a trace into target/debug/tinylens.
(cd firmware-examples && cargo build --release --quiet && cargo build-m0 --quiet \
    && cargo build --release --quiet -p tinylens-fw-board --features trace-rtt \
    && cargo build --release --quiet --target thumbv7em-none-eabi -p tinylens-fw-qemu \
    && cargo build --release --quiet --target thumbv8m.main-none-eabihf -p tinylens-fw-qemu -p tinylens-fw-kernels \
    && cargo build-m55 --quiet && cargo clippy-m55 --quiet -- -D warnings \
    && cargo build --release --quiet --target riscv32imac-unknown-none-elf -p tinylens-fw-qemu \
    && cargo clippy --release --quiet -- -D warnings \
    && for t in thumbv6m-none-eabi thumbv7em-none-eabi thumbv8m.main-none-eabihf riscv32imac-unknown-none-elf; do
           cargo clippy --release --quiet --target "$t" -p tinylens-fw-qemu -- -D warnings || exit 1
       done)
# Board examples with HALs whose PACs turn on cortex-m-rt's `device` feature: workspaces
# of their own, build-checked only (no hardware in CI).
(cd firmware-examples/stm32f4 && cargo build --release --quiet && cargo clippy --release --quiet -- -D warnings)
(cd firmware-examples/rp2040 && cargo build --release --quiet && cargo clippy --release --quiet -- -D warnings)
# ESP32-C3 (riscv32imc) with esp-hal: a workspace of its own too.
(cd firmware-examples/esp32c3 && cargo build --release --quiet && cargo clippy --release --quiet -- -D warnings)
cargo build --quiet -p tinylens-host --bin tinylens
# The M0 firmware with a GPTQ-calibrated int4 blob embedded (firmware_qemu's
# `semihosting_microbit_calibrated_int4_blob_bit_exact`).
firmware-examples/build-calibrated.sh "$PWD/target/debug/tinylens" >/dev/null

step "tests: unit, doc, TransformerLens parity, traces, firmware in QEMU, analysis, CLI"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --quiet 2>&1 | tee "$log"

step "Python package (host-tools/python): pip install in a virtualenv, pytest"
# numpy, pytest and safetensors (to read the TransformerLens fixtures) from PyPI; no
# torch. The extension is built with the dev profile in the workspace's target
# directory, so the dependencies `cargo test` just compiled are reused.
venv="$PWD/target/python-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
    python3 -m venv "$venv"
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" numpy pytest safetensors
PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" "$venv/bin/python" -m pip install --quiet \
    --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps \
    --config-settings=build-args="--profile dev" ./host-tools/python
rc=0
(cd host-tools/python && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests) 2>&1 | tee -a "$log" || rc=${PIPESTATUS[0]}
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests (host-tools/python/tests): that is a failure here" >&2
    exit 1
elif [ "$rc" != 0 ]; then
    exit "$rc"
fi
# One closing line for the whole suite (cargo prints one per test binary; pytest's
# closing line is counted in).
awk '/^test result:|^[0-9]+ (passed|failed)/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log"
