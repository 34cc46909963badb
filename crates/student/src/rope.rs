//! Rotary position embedding tables in HF's rotate_half layout.
//!
//! HF Llama rotates the two halves of each head (`[x1, x2] -> [-x2, x1]`), with
//! `inv_freq[i] = theta^(-2i/d)` and both halves sharing a frequency. Burn's own
//! `RotaryEncoding` rotates interleaved pairs, which would not match HF weights.

use burn::prelude::*;

/// cos/sin tables `[len, head_dim]` for positions `start..start+len`, computed like
/// transformers does (f32 inverse frequencies times f32 positions).
pub fn rope_tables(
    start: usize,
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for p in start..start + len {
        let angles: Vec<f32> = inv_freq.iter().map(|f| f * p as f32).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let shape = [len, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Apply RoPE to `x: [b, heads, t, head_dim]` with tables `[t, head_dim]`.
pub(crate) fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
}
