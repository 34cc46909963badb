use std::path::PathBuf;

/// Errors of the student crate; every variant names the file, key or shape at fault.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: invalid config.json: {source}")]
    ConfigJson {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: missing tensor {key} (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },

    #[error("{path}: tensor {key} has shape {found:?}, the config needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor {key} has dtype {dtype}, only F32, F16 and BF16 are supported")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    #[error(
        "{path}: {count} tensors not used by the config, e.g. {examples:?}; does config.json match the weights?"
    )]
    UnexpectedTensors {
        path: PathBuf,
        count: usize,
        examples: Vec<String>,
    },
}
