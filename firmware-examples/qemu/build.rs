//! Puts the memory layout of the emulated board on the linker search path as
//! `memory.x` (cortex-m-rt's `link.x` includes it): mps2-an386 for ARMv7E-M targets,
//! BBC micro:bit (nRF51822) for ARMv6-M targets.
use std::{env, fs, path::PathBuf};

fn main() {
    let target = env::var("TARGET").unwrap();
    let layout = if target.starts_with("thumbv6m") {
        "memory-microbit.x"
    } else {
        "memory-mps2-an386.x"
    };
    // `cfg(microbit)`: the 16 KiB-RAM machine (main.rs checks the model fits).
    println!("cargo::rustc-check-cfg=cfg(microbit)");
    if target.starts_with("thumbv6m") {
        println!("cargo:rustc-cfg=microbit");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy(layout, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=build.rs");
}
