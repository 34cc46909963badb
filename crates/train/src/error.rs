use std::path::PathBuf;

/// Errors of training and evaluation; each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("invalid override {0:?}: expected key.path=value, e.g. train.lr=1e-3")]
    Override(String),

    #[error(transparent)]
    Data(#[from] ember_data::DataError),

    #[error(transparent)]
    Student(#[from] ember_student::StudentError),

    #[error("vocabulary mismatch: {0}")]
    Vocab(String),

    #[error("training in {path} stopped: {message}")]
    Training { path: PathBuf, message: String },

    #[error("training in {path} stopped at a non-finite value: {message}")]
    NonFinite { path: PathBuf, message: String },

    #[error("{what} is not finite ({value}); the model or the data holds NaN/infinite values")]
    NotFinite { what: String, value: f64 },

    #[error("teacher: {0}")]
    Teacher(#[from] ember_teacher::TeacherError),

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}
