//! Tells the kernels whether the target has the Armv7E-M DSP extension (SMLAD, SXTB16).
//!
//! Stable Rust does not expose ARM target features to `cfg` (`target_feature = "dsp"`
//! is unstable), so the target triple decides: `thumbv7em-*-eabihf` (Cortex-M4F,
//! Cortex-M7F) has the DSP instructions and an FPU, and its LLVM target enables both
//! (the kernel's last step converts with VFP instructions). Set `TINYLENS_NO_DSP=1` to
//! build the portable kernels only (for comparisons).
use std::env;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(tinylens_dsp)");
    println!("cargo:rerun-if-env-changed=TINYLENS_NO_DSP");
    let target = env::var("TARGET").unwrap_or_default();
    let off = env::var_os("TINYLENS_NO_DSP").is_some_and(|v| !v.is_empty() && v != "0");
    if target.starts_with("thumbv7em") && target.ends_with("eabihf") && !off {
        println!("cargo:rustc-cfg=tinylens_dsp");
    }
}
