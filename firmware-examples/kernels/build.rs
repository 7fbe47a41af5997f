//! Puts the QEMU mps2-an386 memory layout (shared with the `qemu` example) on the
//! linker search path as `memory.x`.
use std::{env, fs, path::PathBuf};

fn main() {
    let layout = "../qemu/memory-mps2-an386.x";
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy(layout, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={layout}");
    println!("cargo:rerun-if-changed=build.rs");
}
