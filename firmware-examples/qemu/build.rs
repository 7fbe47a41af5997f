//! Picks the emulated machine and puts its memory layout on the linker search path as
//! `memory.x` (cortex-m-rt's `link.x` includes it). The machine follows from the
//! target, or from `TINYLENS_QEMU_MACHINE`:
//!
//! - `thumbv7em-none-eabihf` → `mps2-an386` (Cortex-M4F);
//! - `thumbv7em-none-eabi` → `netduinoplus2` (STM32F405: the memory map of a real
//!   STM32F4 part, built soft-float);
//! - `thumbv6m-none-eabi` → `microbit` (nRF51822, Cortex-M0, 16 KiB RAM);
//! - `thumbv8m.main-none-eabihf` → `mps2-an505` (Cortex-M33, Secure state), or
//!   `mps3-an547` (Cortex-M55 with Helium, Secure state) when the flags name
//!   `-C target-cpu=cortex-m55` (`cargo build-m55`).
//!
//! - `riscv32imac-unknown-none-elf` → `virt` (QEMU `qemu-system-riscv32 -machine virt
//!   -bios none`): `link-riscv32-virt.x` is the whole linker script (`link.x`; there is
//!   no cortex-m-rt).
//!
//! It sets one of the cfgs `microbit`, `netduinoplus2`, `mps2_an505`, `mps3_an547`
//! (none for mps2-an386 and mps2-an500, which share a memory map), which select the UART
//! driver and the RAM size in main.rs.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(microbit)");
    println!("cargo::rustc-check-cfg=cfg(netduinoplus2)");
    println!("cargo::rustc-check-cfg=cfg(mps2_an505)");
    println!("cargo::rustc-check-cfg=cfg(mps3_an547)");
    println!("cargo::rustc-check-cfg=cfg(riscv_virt)");
    println!("cargo:rerun-if-env-changed=TINYLENS_QEMU_MACHINE");
    let target = env::var("TARGET").unwrap();
    let m55 = env::var("CARGO_ENCODED_RUSTFLAGS")
        .unwrap_or_default()
        .split('\x1f')
        .filter_map(|f| {
            f.strip_prefix("target-cpu=")
                .or(f.strip_prefix("-Ctarget-cpu="))
        })
        .next_back()
        == Some("cortex-m55");
    let machine = match env::var("TINYLENS_QEMU_MACHINE") {
        Ok(m) if !m.is_empty() => m,
        _ if target.starts_with("riscv32") => "virt".into(),
        _ if target.starts_with("thumbv6m") => "microbit".into(),
        _ if target.starts_with("thumbv8m.main") && m55 => "mps3-an547".into(),
        _ if target.starts_with("thumbv8m.main") => "mps2-an505".into(),
        _ if target == "thumbv7em-none-eabi" => "netduinoplus2".into(),
        _ => "mps2-an386".into(),
    };
    let cfg = match machine.as_str() {
        "microbit" => Some("microbit"),
        "netduinoplus2" => Some("netduinoplus2"),
        "mps2-an505" => Some("mps2_an505"),
        "mps3-an547" => Some("mps3_an547"),
        "virt" => Some("riscv_virt"),
        "mps2-an386" => None,
        other => panic!(
            "TINYLENS_QEMU_MACHINE={other}: expected mps2-an386, netduinoplus2, microbit, mps2-an505, mps3-an547 or virt"
        ),
    };
    if let Some(cfg) = cfg {
        println!("cargo:rustc-cfg={cfg}");
    }
    let (layout, script) = if machine == "virt" {
        ("link-riscv32-virt.x".to_string(), "link.x")
    } else {
        (format!("memory-{machine}.x"), "memory.x")
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy(&layout, out.join(script)).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=build.rs");
}
