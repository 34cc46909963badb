use std::path::PathBuf;

/// Errors of the teacher crate; each names the file, key or shape at fault.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
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

    #[error("{dir}: missing tensor {key} (expected shape {expected:?}); checked {files}")]
    MissingTensor {
        dir: PathBuf,
        key: String,
        expected: Vec<usize>,
        files: String,
    },

    #[error("{path}: tensor {key} has shape {found:?}, the config needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "{path}: tensor {key} has dtype {dtype}; supported: F32, F16, BF16, F8_E4M3 (with weight_scale_inv)"
    )]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    #[error("{path}: shard index lists {key} in {file}, which does not exist")]
    MissingShard {
        path: PathBuf,
        key: String,
        file: String,
    },

    #[error(transparent)]
    Data(#[from] ember_data::DataError),

    #[error("tokenizer mismatch: {0}")]
    Vocab(String),

    #[error("remote teacher {url}: {message}")]
    Remote { url: String, message: String },

    /// A config.json value the architecture cannot use (missing, inconsistent).
    #[error("{model_type}: {message}")]
    ModelConfig { model_type: String, message: String },

    /// A setting given to Ember (a flag, recipe key or environment variable) that is out of range.
    #[error("{setting}: {message}")]
    Setting {
        setting: &'static str,
        message: String,
    },

    /// An environment variable with a value Ember does not know.
    #[error("{var}={value:?}: {hint}")]
    Env {
        var: &'static str,
        value: String,
        hint: &'static str,
    },

    /// An output directory that already holds a different recording.
    #[error("{path}: {message}")]
    ExistingOutput { path: PathBuf, message: String },

    /// A DistillKit capture (or its export) that does not fit the format.
    #[error("{path}: {message}")]
    DistillKit { path: PathBuf, message: String },

    #[error(
        "teacher {teacher} gave a non-finite log-probability ({value}) at dataset row {row}, position {position}; its weights or inputs hold NaN/infinite values, nothing was written for this shard"
    )]
    NonFinite {
        teacher: String,
        row: usize,
        position: usize,
        value: f32,
    },
}
