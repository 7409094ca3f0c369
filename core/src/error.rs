//! The one error type of `dgpo-core`.
//!
//! Every variant that comes from a file names the file, and where it makes sense the line or
//! the key, so that a user who points the toolkit at a bad model or corpus learns *which* input
//! is wrong and *why*, not just that "something failed".

use std::path::{Path, PathBuf};

/// Result alias used throughout `dgpo-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by the runtime library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error while reading or writing `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be (bad header, wrong shape, missing
    /// tensor, unknown architecture, ...).
    #[error("{}: {msg}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A line of a line-oriented file (JSONL corpus, dataset) is malformed.
    #[error("{}:{line}: {msg}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        msg: String,
    },
    /// An argument or configuration value is invalid.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A tensor operation failed (shape mismatch, dtype, device).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// The disk index (LMDB / ANN) reported a problem.
    #[error("index {}: {msg}", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A model backend (e.g. llama.cpp) reported a problem.
    #[error("backend {backend}: {msg}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        msg: String,
    },
    /// A remote service (retriever server) failed.
    #[error("remote {url}: {msg}")]
    Remote {
        /// The endpoint.
        url: String,
        /// What went wrong.
        msg: String,
    },
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A content error in `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// A malformed line `line` (1-based) of `path`.
    pub fn line(path: impl AsRef<Path>, line: usize, msg: impl Into<String>) -> Self {
        Error::Line {
            path: path.as_ref().to_path_buf(),
            line,
            msg: msg.into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// Attach a file to a tensor/tokenizer error that happened while reading it.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            Error::Candle(e) => Error::format(path, e.to_string()),
            Error::Tokenizer(m) => Error::format(path, format!("tokenizer: {m}")),
            Error::Invalid(m) => Error::format(path, m),
            other => other,
        }
    }
}
