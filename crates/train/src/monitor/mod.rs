//! What burn-train reports and keeps during a run, one concern per file: Ember's metrics
//! (`metrics`), how epochs map onto optimizer steps (`shape`), the `metrics.jsonl` log
//! (`jsonl`), the progress bar (`progress`) and step-numbered checkpoints written
//! atomically (`checkpoints`).

mod checkpoints;
mod jsonl;
mod metrics;
mod progress;
mod shape;

pub use checkpoints::{CheckpointState, EveryNSteps, StepCheckpoints};
pub use jsonl::JsonlLogger;
pub use metrics::{StatMetric, TokensPerSecond};
pub use progress::StepBar;
pub use shape::RunShape;
