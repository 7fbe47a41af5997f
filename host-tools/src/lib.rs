//! Host tools for tinylens: TransformerLens import, blob conversion, trace decoding and
//! the circuit analysis of "A Mathematical Framework for Transformer Circuits".

pub mod analysis;
pub mod cli;
pub mod commands;
pub mod convert;
pub mod error;
pub mod export;
pub mod numerics;
pub mod quantize;
pub mod run;
pub mod tl;
pub mod trace;
pub mod weights;

pub use error::{Error, Result};
