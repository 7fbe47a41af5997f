//! Chooses the model blob that `tinylens_fw::MODEL_BLOB` embeds.
//!
//! `TINYLENS_MODEL=/path/to/model.tlb cargo build --release` embeds that file; without
//! it the blob is empty (the skeleton firmware then runs a placeholder step).
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TINYLENS_MODEL");
    let blob = match env::var_os("TINYLENS_MODEL") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            let path = fs::canonicalize(&path)
                .unwrap_or_else(|e| panic!("TINYLENS_MODEL={}: {e}", path.display()));
            println!("cargo:rerun-if-changed={}", path.display());
            path
        }
        _ => {
            let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("no-model.bin");
            fs::write(&out, []).unwrap();
            out
        }
    };
    println!("cargo:rustc-env=TINYLENS_FW_MODEL_PATH={}", blob.display());
}
