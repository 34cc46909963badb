use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("run {run}: {source}")]
    Train {
        run: String,
        source: ember_train::TrainError,
    },
    #[error("recording teacher logits into {path}: {source}")]
    Record {
        path: PathBuf,
        source: ember_teacher::TeacherError,
    },
    #[error("{path}: {message}")]
    Metrics { path: PathBuf, message: String },
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error(transparent)]
    Data(#[from] ember_data::DataError),
}
