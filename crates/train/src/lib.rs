//! Training and evaluation of Ember students.
//!
//! One readable loop (`trainer.rs`) on Burn's autodiff + AdamW: micro-batches,
//! gradient accumulation, global-norm clipping, warmup+cosine learning rate,
//! step-level checkpoints that a killed run resumes from, metrics as JSON lines.

mod batches;
mod chat_eval;
mod config;
mod distill;
mod error;
mod eval;
mod kd;
mod loss;
mod trainer;

pub use chat_eval::{ChatEvalReport, Score, evaluate_chat};
pub use config::{
    DataSection, ModelSection, Precision, TeacherSection, TrainConfig, TrainSection, load_config,
};
pub use distill::KdEval;
pub use error::TrainError;
pub use eval::{EvalReport, evaluate};
pub use kd::{
    HiddenLoss, KdConfig, KdLoss, KdOutput, TailMode, TeacherTargets, chunked_logsumexp, kd_loss,
    loss_from_hidden, loss_from_hidden_in_chunks,
};
pub use loss::{cross_entropy, dataset_batch, next_token_batch};
pub use trainer::{TrainSummary, lr_at, train};
