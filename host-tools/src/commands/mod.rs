//! One module per `tinylens` subcommand.

pub mod convert;
pub mod decode;
pub mod info;
pub mod run;
