//! Training and evaluation of Ember students.
//!
//! A run (`trainer.rs`) on burn-train's `Learner` and `SupervisedTraining`, with Burn's
//! autodiff and AdamW: micro-batches, gradient accumulation, global-norm clipping,
//! warmup+cosine learning rate (`learner.rs`), data loaders whose position follows the
//! optimizer step (`feed.rs`), step-numbered checkpoints that a killed run resumes from,
//! and metrics as JSON lines (`monitor.rs`).

mod batches;
mod chat_eval;
mod config;
mod distill;
mod error;
mod eval;
mod feed;
mod kd;
mod learner;
mod loss;
mod monitor;
mod onpolicy;
mod trainer;

pub use chat_eval::{ChatEvalReport, Score, evaluate_chat};
pub use config::{
    DataSection, ModelSection, Objective, OnPolicySection, Precision, RemoteProtocol,
    TeacherSection, TrainConfig, TrainSection, load_config,
};
pub use distill::KdEval;
pub use error::TrainError;
pub use eval::{EvalReport, evaluate};
pub use kd::{
    HiddenLoss, KdConfig, KdLoss, KdOutput, SampledTargets, TailMode, TeacherTargets,
    chunked_logsumexp, kd_loss, loss_from_hidden, loss_from_hidden_in_chunks,
    sampled_loss_from_hidden, sampled_loss_from_hidden_in_chunks,
};
pub use learner::{Distiller, NonFiniteGuard, WarmupCosine, clip_global_norm, lr_at};
pub use loss::{cross_entropy, dataset_batch, next_token_batch};
pub use trainer::{TrainSummary, train};
