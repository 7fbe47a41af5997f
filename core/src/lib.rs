#![cfg_attr(not(test), no_std)]
mod error;
pub use error::Error;
