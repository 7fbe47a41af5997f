//! Chooses the model blob that `tinylens_fw::MODEL_BLOB` embeds.
//!
//! 1. `TINYLENS_MODEL=/path/to/model.tlm cargo build --release` embeds that file (a
//!    relative path is relative to `firmware-examples/`);
//! 2. otherwise, for `thumbv6m` (Cortex-M0, QEMU micro:bit with 16 KiB of RAM) the
//!    fixture `models/attn1_ln-int8.tlm` (1 layer, d_model 32, n_ctx 24: ~7 KiB of
//!    working memory);
//! 3. otherwise the demo model `<repo>/models/demo/demo-int8.tlm` when it exists,
//!    else the fixture `models/attn2_shortformer_ln-int8.tlm`.
//!
//! Only the blob's first `total_len` bytes (header offset 12) are embedded: a blob made by
//! `tinylens convert --tokenizer` carries the tokenizer after them, in a host-only trailer
//! (core/BLOB_FORMAT.md) that the device never reads, so the build embeds a copy without it
//! (in `OUT_DIR`) and the trailer never reaches flash.
//!
//! The blob's config is read at compile time (`tinylens_core::blob::peek_config` is a
//! `const fn`), so the working memory is sized for exactly this blob and a file that
//! is not a blob fails the build.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TINYLENS_MODEL");
    println!("cargo:rerun-if-changed=build.rs");
    let here = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let examples = here.parent().unwrap().to_path_buf();
    let repo = examples.parent().unwrap().to_path_buf();
    let target = env::var("TARGET").unwrap_or_default();

    let blob = match env::var_os("TINYLENS_MODEL") {
        // A relative path is taken from firmware-examples/ (where `cargo build` runs).
        Some(path) if !path.is_empty() => examples.join(path),
        _ if target.starts_with("thumbv6m") => examples.join("models/attn1_ln-int8.tlm"),
        _ => {
            let demo_dir = repo.join("models/demo");
            // A directory is scanned for changes: the demo blob appearing triggers a rebuild.
            if demo_dir.is_dir() {
                println!("cargo:rerun-if-changed={}", demo_dir.display());
            }
            let demo = demo_dir.join("demo-int8.tlm");
            if demo.is_file() {
                demo
            } else {
                examples.join("models/attn2_shortformer_ln-int8.tlm")
            }
        }
    };
    let blob = blob
        .canonicalize()
        .unwrap_or_else(|e| panic!("model blob {} (TINYLENS_MODEL): {e}", blob.display()));
    println!("cargo:rerun-if-changed={}", blob.display());
    let name = blob.file_name().unwrap().to_string_lossy().into_owned();
    let blob = device_part(&blob, &name);
    println!("cargo:rustc-env=TINYLENS_FW_MODEL_PATH={}", blob.display());
    println!("cargo:rustc-env=TINYLENS_FW_MODEL_NAME={name}");
}

/// `path` itself if it holds exactly one blob, else a copy of its first `total_len` bytes
/// in `OUT_DIR` (the host-only trailer left out). A file too short to say is embedded as it
/// is, and `tinylens_fw::CONFIG` fails the build with the blob error.
fn device_part(path: &std::path::Path, name: &str) -> PathBuf {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("model blob {}: {e}", path.display()));
    let total = bytes
        .get(12..16)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match total {
        Some(total) if total >= 16 && total < bytes.len() => {
            let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join(name);
            std::fs::write(&out, &bytes[..total])
                .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
            out
        }
        _ => path.to_path_buf(),
    }
}
