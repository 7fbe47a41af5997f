//! Picks the emulated machine and puts its memory layout on the linker search path as
//! `memory.x` (cortex-m-rt's `link.x` includes it). The machine follows from the
//! target, or from `TINYLENS_QEMU_MACHINE`:
//!
//! - `thumbv7em-none-eabihf` → `mps2-an386` (Cortex-M4F);
//! - `thumbv7em-none-eabi` → `netduinoplus2` (STM32F405: the memory map of a real
//!   STM32F4 part, built soft-float);
//! - `thumbv6m-none-eabi` → `microbit` (nRF51822, Cortex-M0, 16 KiB RAM);
//! - `thumbv8m.main-none-eabihf` → `mps2-an505` (Cortex-M33, Secure state).
//!
//! It sets one of the cfgs `microbit`, `netduinoplus2`, `mps2_an505` (none for
//! mps2-an386), which select the UART driver and the RAM size in main.rs.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(microbit)");
    println!("cargo::rustc-check-cfg=cfg(netduinoplus2)");
    println!("cargo::rustc-check-cfg=cfg(mps2_an505)");
    println!("cargo:rerun-if-env-changed=TINYLENS_QEMU_MACHINE");
    let target = env::var("TARGET").unwrap();
    let machine = match env::var("TINYLENS_QEMU_MACHINE") {
        Ok(m) if !m.is_empty() => m,
        _ if target.starts_with("thumbv6m") => "microbit".into(),
        _ if target.starts_with("thumbv8m.main") => "mps2-an505".into(),
        _ if target == "thumbv7em-none-eabi" => "netduinoplus2".into(),
        _ => "mps2-an386".into(),
    };
    let cfg = match machine.as_str() {
        "microbit" => Some("microbit"),
        "netduinoplus2" => Some("netduinoplus2"),
        "mps2-an505" => Some("mps2_an505"),
        "mps2-an386" => None,
        other => panic!(
            "TINYLENS_QEMU_MACHINE={other}: expected mps2-an386, netduinoplus2, microbit or mps2-an505"
        ),
    };
    if let Some(cfg) = cfg {
        println!("cargo:rustc-cfg={cfg}");
    }
    let layout = format!("memory-{machine}.x");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy(&layout, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=build.rs");
}
