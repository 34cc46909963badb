//! Next-token cross-entropy.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Turn packed rows (flattened, `seq_len` each) into `(inputs, targets)` of shape
/// `[rows, seq_len - 1]`: position i predicts token i + 1 of the same row.
pub fn next_token_batch(
    rows: &[i32],
    seq_len: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let b = rows.len() / seq_len;
    let t = seq_len - 1;
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for row in rows.chunks(seq_len) {
        inputs.extend_from_slice(&row[..t]);
        targets.extend_from_slice(&row[1..]);
    }
    (
        Tensor::from_data(TensorData::new(inputs, [b, t]), device),
        Tensor::from_data(TensorData::new(targets, [b, t]), device),
    )
}

/// Mean negative log-likelihood (nats) of `targets: [b, t]` under `logits: [b, t, V]`.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let logp = log_softmax(logits, 2);
    let picked = logp.gather(2, targets.unsqueeze_dim::<3>(2));
    picked.mean().neg()
}
