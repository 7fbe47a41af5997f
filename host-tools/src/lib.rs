//! Host tools for tinylens: TransformerLens import, blob conversion, trace decoding and
//! the circuit analysis of "A Mathematical Framework for Transformer Circuits".

#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod analysis;
#[macro_use]
pub mod cli;
pub mod commands;
pub mod convert;
pub mod engine;
pub mod error;
pub mod export;
pub mod live;
pub mod numerics;
pub mod prompts;
pub mod quantize;
pub mod run;
pub mod tl;
pub mod tokenizer;
pub mod trace;
pub mod weights;

pub use error::{Error, Result};
