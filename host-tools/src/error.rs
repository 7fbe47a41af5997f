//! The host crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the host tools. Each message names the file,
/// tensor or argument at fault, so that the CLI can print it as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}, expected a float type")]
    TensorDtype { name: String, dtype: String },
    #[error("tensor `{name}` contains a non-finite value (NaN or infinity)")]
    NonFiniteWeight { name: String },
    #[error("config: {0}")]
    Config(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Core(#[from] tinylens_core::Error),
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("trace: {0}")]
    Trace(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
