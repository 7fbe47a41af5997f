#![cfg_attr(not(test), no_std)]
// No `unsafe` anywhere but in one module: the Cortex-M DSP int8 kernel
// (`kernels/dsp.rs`, compiled only for Armv7E-M targets), whose inline assembly is
// necessarily `unsafe`. `deny` rather than `forbid` so that that module alone can
// `#[allow(unsafe_code)]`; every other module stays free of it, and the portable kernel
// it must match bit for bit remains the reference.
#![deny(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod blob;
pub mod config;
mod error;
pub mod forward;
pub mod hooks;
pub mod intervene;
pub mod kernels;
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
pub use forward::Session;
pub use hooks::{HookPoint, Hooks, NoHooks, Site};
pub use quant::StorageKind;
