//! The Cortex-M4 DSP int8 kernel against the portable one, bit for bit, in QEMU: the
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

const TRIPLE: &str = "thumbv7em-none-eabihf";
const QEMU_TIMEOUT_S: u64 = 60;

#[test]
fn m4_dsp_int8_kernel_is_bit_identical_to_the_portable_kernel() {
    require_tools();
    let elf = elf("tinylens-fw-kernels", "kernels", TRIPLE);
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
