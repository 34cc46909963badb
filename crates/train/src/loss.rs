//! Next-token cross-entropy.

use burn::prelude::*;
use burn::tensor::DType;
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

/// `(inputs, targets, positions with a loss)` of dataset rows `rows`: for instruction
/// datasets the targets come from the `labels` column (-100 on prompts and padding).
pub fn dataset_batch(
    data: &ember_data::TokenDataset,
    rows: &[usize],
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, usize) {
    let t = data.seq_len();
    let flat: Vec<i32> = rows
        .iter()
        .flat_map(|&r| data.row(r).iter().copied())
        .collect();
    let (inputs, targets) = next_token_batch(&flat, t, device);
    if data.labels(0).is_none() {
        return (inputs, targets, rows.len() * (t - 1));
    }
    let labels: Vec<i32> = rows
        .iter()
        .flat_map(|&r| data.labels(r).expect("labels")[1..].iter().copied())
        .collect();
    let kept = labels.iter().filter(|&&l| l >= 0).count();
    let targets = Tensor::from_data(TensorData::new(labels, [rows.len(), t - 1]), device);
    (inputs, targets, kept)
}

/// Mean negative log-likelihood (nats) of `targets: [b, t]` under `logits: [b, t, V]`;
/// positions with a negative target (padding, prompt tokens; HF's -100) are left out.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let (mask, kept) = position_mask(&targets);
    let logp = log_softmax(logits, 2);
    let picked = logp.gather(2, targets.clamp_min(0).unsqueeze_dim::<3>(2));
    (picked * mask.reshape([b, t, 1])).sum().div(kept).neg()
}

/// `(mask [b, t], count [1])` in f32: 1 where `targets >= 0`; the count is at least 1.
pub(crate) fn position_mask(targets: &Tensor<2, Int>) -> (Tensor<2>, Tensor<1>) {
    let mask = targets
        .clone()
        .greater_equal_elem(0)
        .float()
        .cast(DType::F32);
    let kept = mask.clone().sum().clamp_min(1.0);
    (mask, kept)
}
