//! The Cortex-M4 DSP int8 kernel and the Cortex-M55 Helium (MVE) one against the portable
//! kernel, bit for bit, in QEMU (mps2-an386, mps3-an547): the
//! self-test firmware `firmware-examples/kernels` multiplies thousands of random
//! matrices (every weight byte, every int8 activation, 1 to 160 columns, every row
//! alignment, and matrices quantized from floats as the converter makes them) with
//! both kernels and exits 1 on the first differing output bits. It also runs its
//! instruction-count micro-benchmarks, which must all complete.
//!
//! The ELF is built by the test command (`scripts/test.sh` builds the whole firmware
//! workspace); a missing ELF is built here with cargo, except under `CI=true`.

use std::process::Command;
use std::time::Duration;

use tinylens_tests::firmware::{elf, examples, require_tools};
use tinylens_tests::run_with_watchdog;

const M4: &str = "thumbv7em-none-eabihf";
/// Cortex-M33 (mps2-an505): `target-cpu=cortex-m33` from firmware-examples/.cargo/config.toml.
const M33: &str = "thumbv8m.main-none-eabihf";
/// `cargo build-m55`: thumbv8m.main with `target-cpu=cortex-m55` in `target/cortex-m55`.
const M55: &str = "cortex-m55/thumbv8m.main-none-eabihf";
const QEMU_TIMEOUT_S: u64 = 60;

#[test]
fn m4_dsp_int8_kernel_is_bit_identical_to_the_portable_kernel() {
    let stdout = self_test(M4);
    assert!(
        stdout.contains("DSP int8 kernel on"),
        "the M4 build must use the DSP kernel:\n{stdout}"
    );
}

#[test]
fn mps2_an505_m33_dsp_int8_kernel_is_bit_identical_to_the_portable_kernel() {
    let stdout = self_test(M33);
    assert!(
        stdout.contains("DSP int8 kernel on"),
        "the M33 build must use the DSP kernel:\n{stdout}"
    );
}

#[test]
fn mps3_an547_m55_mve_int8_kernel_is_bit_identical_to_the_portable_kernel() {
    let stdout = self_test(M55);
    assert!(
        stdout.contains("MVE int8 kernel on"),
        "the M55 build must use the MVE kernel:\n{stdout}"
    );
}

/// Runs the kernel firmware for `triple` and checks its self-test and benchmarks ran
/// through with no mismatch; returns its stdout.
fn self_test(triple: &str) -> String {
    require_tools();
    let elf = elf("tinylens-fw-kernels", "kernels", triple);
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
    let line = stdout
        .lines()
        .find(|l| l.starts_with("self-test:"))
        .unwrap_or_else(|| panic!("no self-test line:\n{stdout}"));
    assert!(line.ends_with(" 0 mismatches"), "{line}");
    // Most rows go through the DSP/MVE path (the rest test the fallbacks).
    let dsp_rows: usize = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dsp_rows > 1000, "too few rows on the vector path: {line}");
    assert!(
        stdout.contains("benches:"),
        "the micro-benchmarks did not finish:\n{stdout}"
    );
    stdout
}
