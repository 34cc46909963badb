use std::path::PathBuf;

/// Everything that can go wrong while reading or writing Ember datasets.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error(
        "tokenizer {path} has no token {token:?}; add it as a special token or pass another with --eos-token"
    )]
    MissingToken { path: PathBuf, token: String },

    #[error("Arrow error in {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },

    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    #[error("{path}: line {line}: {message}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("no input files: {0}")]
    NoInput(String),

    #[error("invalid configuration: {0}")]
    Config(String),
}
