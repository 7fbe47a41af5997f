#!/usr/bin/env bash
# The host engine on aarch64 (NEON kernels), run under qemu-aarch64 user-mode emulation:
# the kernel test (every NEON kernel against the core's portable kernels, bit for bit)
# and tests/tests/engine.rs (batched runs equal stepping for every storage kind).
# Installs what it needs: qemu-user, the aarch64 cross gcc (linker, C dependencies) and
# the rustup target.
#
#   ./scripts/test_aarch64.sh
#
# Not part of scripts/test.sh: the first run compiles the host crate and its
# dependencies for aarch64 (minutes on 2 cores), more than the suite can spare.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

# Which kernels the emulated CPU gets (qemu-aarch64's default CPU has NEON).
cargo test --quiet --target "$target" -p tinylens-host --lib engine:: -- --nocapture
cargo test --quiet --target "$target" -p tinylens-tests --test engine
