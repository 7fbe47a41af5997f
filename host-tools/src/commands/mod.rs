//! One module per `tinylens` subcommand.

pub mod ablate;
pub mod attribute;
pub mod bench;
pub mod circuits;
pub mod convert;
pub mod decode;
pub mod demo;
pub mod heads;
pub mod info;
pub mod monitor;
pub mod paths;
pub mod report;
pub mod run;
