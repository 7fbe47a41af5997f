//! Tells the kernels whether the target has the DSP extension (SMLAD, SXTB16) and an
//! FPU the DSP kernel may use.
//!
//! Stable Rust does not expose ARM target features to `cfg` (`target_feature = "dsp"`
//! is unstable) nor to build scripts, so this script decides from the target triple
//! and the compiler flags, as CMSIS-NN keys on `__ARM_FEATURE_DSP`:
//!
//! - Armv7E-M (`thumbv7em-none-eabi`, `thumbv7em-none-eabihf`: Cortex-M4, M7): the
//!   DSP extension is part of the architecture, so the DSP kernel is always on;
//! - Armv8-M Mainline (`thumbv8m.main-none-eabi[hf]`: Cortex-M33 in nRF5340, STM32U5,
//!   RP2350; M35P, M55, M85): the extension is optional, so it is on when the flags
//!   say the core has it: `-C target-feature=+dsp`, or `-C target-cpu=` one of
//!   cortex-m33, cortex-m35p, cortex-m55, cortex-m85 (in `RUSTFLAGS` or
//!   `.cargo/config.toml`'s `rustflags`), or when `TINYLENS_DSP=1` forces it (the build
//!   then needs one of those flags for the assembler to accept the instructions);
//! - `TINYLENS_NO_DSP=1` builds the portable kernels only (for comparisons).
//!
//! - Helium (MVE, Armv8.1-M): `-C target-cpu=cortex-m55` or `cortex-m85` (the last
//!   `target-cpu` given), or `-C target-feature=+mve`, on `thumbv8m.main` targets turns
//!   on the MVE kernel as well (`cfg(tinylens_mve)`, with the DSP kernel for the rows it
//!   leaves); `TINYLENS_NO_MVE=1` keeps the DSP kernel only.
//!
//! `cfg(tinylens_dsp)` turns the DSP kernel on; `cfg(tinylens_dsp_vfp)` lets it convert
//! with VFP instructions (hard-float targets, whose LLVM target enables the FPU), else
//! it converts in Rust (the same operations, so the same bits). `cfg(tinylens_vfp)`
//! turns on the FPU kernels of `kernels/vfp.rs` (attention, f16 weights) on every
//! hard-float Armv7E-M / Armv8-M target (FPv4-SP and up).
use std::env;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(tinylens_dsp)");
    println!("cargo:rustc-check-cfg=cfg(tinylens_dsp_vfp)");
    println!("cargo:rustc-check-cfg=cfg(tinylens_vfp)");
    println!("cargo:rerun-if-env-changed=TINYLENS_NO_VFP");
    println!("cargo:rustc-check-cfg=cfg(tinylens_mve)");
    println!("cargo:rerun-if-env-changed=TINYLENS_NO_MVE");
    println!("cargo:rerun-if-env-changed=TINYLENS_NO_DSP");
    println!("cargo:rerun-if-env-changed=TINYLENS_DSP");
    let target = env::var("TARGET").unwrap_or_default();
    let flag = |name: &str| env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    // The flags rustc gets for this crate, separated by 0x1f.
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = rustflags.split('\x1f').collect();
    // The values of the codegen options (`-C x=y`, `-Cx=y`, `--codegen=x=y`), in order.
    let codegen: Vec<&str> = flags
        .iter()
        .enumerate()
        .map(|(i, f)| match f.strip_prefix("-C") {
            Some("") => flags.get(i + 1).copied().unwrap_or(""),
            Some(v) => v,
            None => f.strip_prefix("--codegen=").unwrap_or(""),
        })
        .collect();
    let has = |prefix: &str, pred: &dyn Fn(&str) -> bool| {
        codegen
            .iter()
            .any(|v| v.strip_prefix(prefix).is_some_and(pred))
    };
    let dsp_feature = has("target-feature=", &|v| {
        v.split(',').any(|f| f == "+dsp") && !v.split(',').any(|f| f == "-dsp")
    });
    let dsp_cpu = has("target-cpu=", &|v| {
        matches!(
            v,
            "cortex-m33" | "cortex-m35p" | "cortex-m55" | "cortex-m85"
        )
    });
    let dsp = if target.starts_with("thumbv7em") {
        true
    } else if target.starts_with("thumbv8m.main") {
        dsp_feature || dsp_cpu || flag("TINYLENS_DSP")
    } else {
        false
    };
    let hard_float = target.ends_with("eabihf")
        && (target.starts_with("thumbv7em") || target.starts_with("thumbv8m.main"));
    if hard_float && !flag("TINYLENS_NO_VFP") {
        println!("cargo:rustc-cfg=tinylens_vfp");
    }
    // The last `-C target-cpu=` wins, as in rustc.
    let cpu = codegen
        .iter()
        .filter_map(|v| v.strip_prefix("target-cpu="))
        .next_back();
    let mve_feature = has("target-feature=", &|v| {
        v.split(',').any(|f| f == "+mve" || f == "+mve.fp")
    });
    let mve = target.starts_with("thumbv8m.main")
        && (mve_feature || matches!(cpu, Some("cortex-m55" | "cortex-m85")));
    if (dsp || mve) && !flag("TINYLENS_NO_DSP") {
        println!("cargo:rustc-cfg=tinylens_dsp");
        if target.ends_with("eabihf") {
            println!("cargo:rustc-cfg=tinylens_dsp_vfp");
        }
        if mve && !flag("TINYLENS_NO_MVE") {
            println!("cargo:rustc-cfg=tinylens_mve");
        }
    }
}
