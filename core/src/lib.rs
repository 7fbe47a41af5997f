#![cfg_attr(not(test), no_std)]
// No `unsafe` anywhere but in isolated modules: the Cortex-M DSP, Helium (MVE) and FPU
// kernels (`kernels/dsp.rs`, `kernels/mve.rs`, `kernels/vfp.rs`, each compiled only for
// targets with its extension), whose inline assembly is necessarily `unsafe`, and the
// lock-free trace ring (`trace/ring.rs`),
// whose bytes a producer and a consumer (main loop, interrupt, DMA) share. `deny`
// rather than `forbid` so that those modules alone can `#[allow(unsafe_code)]`; every
// other module stays free of it, and the portable kernel the DSP one must match bit for
// bit remains the reference.
#![deny(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod blob;
pub mod config;
mod error;
pub mod forward;
pub mod hooks;
pub mod intervene;
pub mod kernels;
pub mod kv;
pub mod probe;
pub mod quant;
pub mod sample;
pub mod trace;

#[cfg(test)]
mod block_tests;
#[cfg(test)]
mod robustness_tests;

pub use blob::{Model, Processing};
pub use config::{Config, Normalization, Positional};
pub use error::Error;
pub use forward::{Session, SessionOptions};
pub use hooks::{HookPoint, Hooks, NoHooks, Site};
pub use kv::KvStorage;
pub use quant::{Int4Group, StorageKind};
