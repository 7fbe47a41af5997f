//! The Cortex-M4 DSP int8 kernel against the portable one, bit for bit, in QEMU: the
//! self-test firmware `firmware-examples/kernels` multiplies thousands of random
//! matrices (every weight byte, every int8 activation, 1 to 160 columns, every row
//! alignment, and matrices quantized from floats as the converter makes them) with
//! both kernels and exits 1 on the first differing output bits. It also runs its
//! instruction-count micro-benchmarks, which must all complete.
//!
//! The ELF is built by the test command (`scripts/test.sh` builds the whole firmware
//! workspace); a missing ELF is built here with cargo, except under `CI=true`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tinylens_tests::{repo_root, run_with_watchdog};

const TRIPLE: &str = "thumbv7em-none-eabihf";
const QEMU_TIMEOUT_S: u64 = 60;

fn examples() -> PathBuf {
    repo_root().join("firmware-examples")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn kernels_elf() -> PathBuf {
    let elf = examples()
        .join("target")
        .join(TRIPLE)
        .join("release/kernels");
    if elf.is_file() {
        return elf;
    }
    let how = "cd firmware-examples && cargo build --release -p tinylens-fw-kernels \
               (scripts/test.sh does this before the tests)";
    assert!(
        !ci(),
        "kernel self-test ELF {} is missing; build it first: {how}",
        elf.display()
    );
    eprintln!("building the kernel self-test firmware: {how}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(examples())
        .args(["build", "--release", "-p", "tinylens-fw-kernels"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}; {how}"));
    assert!(
        status.success() && elf.is_file(),
        "building the kernel self-test failed (needs `rustup target add {TRIPLE}`); {how}"
    );
    elf
}

#[test]
fn m4_dsp_int8_kernel_is_bit_identical_to_the_portable_kernel() {
    for tool in ["qemu-system-arm", "readelf"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} not found (scripts/test.sh installs qemu-system-arm)"
        );
    }
    let elf = kernels_elf();
    let defmt = std::env::temp_dir().join(format!("tinylens-kernels-{}.defmt", std::process::id()));
    let mut cmd = Command::new(examples().join("run-qemu.sh"));
    cmd.arg("--timeout")
        .arg(QEMU_TIMEOUT_S.to_string())
        .arg("--no-decode")
        .arg("--defmt-out")
        .arg(&defmt)
        .arg(&elf);
    let out = run_with_watchdog(cmd, Duration::from_secs(QEMU_TIMEOUT_S + 15));
    let (status, stdout, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.stderr,
    );
    let _ = std::fs::remove_file(&defmt);
    assert_eq!(
        status,
        Some(0),
        "kernel self-test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("DSP int8 kernel on"),
        "the M4 build must use the DSP kernel:\n{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("self-test:"))
        .unwrap_or_else(|| panic!("no self-test line:\n{stdout}"));
    assert!(line.ends_with(" 0 mismatches"), "{line}");
    // Most rows go through the DSP path (the rest test the portable fallback).
    let dsp_rows: usize = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dsp_rows > 1000, "too few rows on the DSP path: {line}");
    assert!(
        stdout.contains("benches:"),
        "the micro-benchmarks did not finish:\n{stdout}"
    );
}
