//! Puts the memory layout of the QEMU machine for this target (shared with the `qemu`
//! example) on the linker search path as `memory.x`: mps2-an386 (Cortex-M4F; its ELF
//! also runs on mps2-an500, Cortex-M7), mps2-an505 for `thumbv8m.main` (Cortex-M33),
//! mps3-an547 for `thumbv8m.main` with `-C target-cpu=cortex-m55` (Helium).
use std::{env, fs, path::PathBuf};

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    let m55 = env::var("CARGO_ENCODED_RUSTFLAGS")
        .unwrap_or_default()
        .split('\x1f')
        .filter_map(|f| {
            f.strip_prefix("target-cpu=")
                .or(f.strip_prefix("-Ctarget-cpu="))
        })
        .next_back()
        == Some("cortex-m55");
    let layout = match () {
        _ if target.starts_with("thumbv8m.main") && m55 => "../qemu/memory-mps3-an547.x",
        _ if target.starts_with("thumbv8m.main") => "../qemu/memory-mps2-an505.x",
        _ => "../qemu/memory-mps2-an386.x",
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy(layout, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=build.rs");
}
