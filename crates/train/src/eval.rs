//! Validation loss and perplexity.

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::TokenDataset;
use ember_student::Student;
use serde::{Deserialize, Serialize};

use crate::cross_entropy;
use crate::loss::dataset_batch;

/// Result of [`evaluate`], written as JSON by `ember eval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean next-token cross-entropy in nats.
    pub loss: f64,
    pub perplexity: f64,
    /// Predicted positions evaluated.
    pub tokens: u64,
    pub sequences: usize,
}

impl EvalReport {
    /// An error naming `what` unless the loss is finite (a NaN model or dataset).
    pub fn check_finite(&self, what: &str) -> Result<(), crate::TrainError> {
        if self.loss.is_finite() {
            Ok(())
        } else {
            Err(crate::TrainError::NotFinite {
                what: format!("{what} loss over {} tokens", self.tokens),
                value: self.loss,
            })
        }
    }
}

/// Mean cross-entropy over the first `max_batches` batches of `data` (0 = all), in row order.
/// Runs without autodiff; `model` should live on a plain (non-autodiff) device.
pub fn evaluate(
    model: &Student,
    data: &TokenDataset,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> EvalReport {
    let n_batches = data.len().div_ceil(batch_size);
    let n_batches = if max_batches == 0 {
        n_batches
    } else {
        n_batches.min(max_batches)
    };
    let mut nll = 0.0f64;
    let mut tokens = 0u64;
    let mut sequences = 0usize;
    for i in 0..n_batches {
        let start = i * batch_size;
        let end = (start + batch_size).min(data.len());
        let rows: Vec<usize> = (start..end).collect();
        let (inputs, targets, n) = dataset_batch(data, &rows, device);
        let n = n as u64;
        let loss: f64 =
            cross_entropy(model.forward(inputs).cast(DType::F32), targets).into_scalar::<f64>();
        nll += loss * n as f64;
        tokens += n;
        sequences += end - start;
    }
    let loss = nll / tokens.max(1) as f64;
    EvalReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        sequences,
    }
}
