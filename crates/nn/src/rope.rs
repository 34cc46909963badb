//! Rotary position embedding in HF's rotate_half layout.
//!
//! HF Llama rotates the two halves of each head (`[x1, x2] -> [-x2, x1]`), with
//! `inv_freq[i] = theta^(-2i/d)` and both halves sharing a frequency. Burn's own
//! `RotaryEncoding` rotates interleaved pairs, which would not match HF weights.

use burn::prelude::*;

/// `base^(-2i/dim)` for `i < dim/2`, in float32 as transformers computes it.
pub fn inv_freq(dim: usize, base: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// cos/sin tables `[len, 2 * inv_freq.len()]` for positions `start..start + len`: each
/// position's angles repeated over both halves (HF layout), times `scale` (a RoPE scaling's
/// attention factor; 1 otherwise).
pub fn tables_from_inv_freq(
    inv_freq: &[f32],
    start: usize,
    len: usize,
    scale: f32,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let dim = 2 * inv_freq.len();
    let mut cos = Vec::with_capacity(len * dim);
    let mut sin = Vec::with_capacity(len * dim);
    for p in start..start + len {
        let angles: Vec<f32> = inv_freq.iter().map(|f| f * p as f32).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos() * scale));
            sin.extend(angles.iter().map(|a| a.sin() * scale));
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [len, dim]), device),
        Tensor::from_data(TensorData::new(sin, [len, dim]), device),
    )
}

/// Unscaled RoPE tables `[len, head_dim]` for positions `start..start + len`.
pub fn rope_tables(
    start: usize,
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    tables_from_inv_freq(&inv_freq(head_dim, theta), start, len, 1.0, device)
}

/// HF `apply_rotary_pos_emb` on `x: [b, h, t, d]`: `x * cos + rotate_half(x) * sin` on the
/// first `r` dims (`cos`/`sin` are `[t, r]`), the rest passed through (partial RoPE).
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let d = x.dims()[3];
    let r = cos.dims()[1];
    if r < d {
        let pass = x.clone().narrow(3, r, d - r);
        return Tensor::cat(vec![apply_rope(x.narrow(3, 0, r), cos, sin), pass], 3);
    }
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
}

/// Rotary embedding for checkpoints whose rotary dims are stored interleaved
/// (`x0, y0, x1, y1, ...`): de-interleave to `[x..., y...]`, then rotate_half.
pub fn apply_rope_interleaved(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let x = x
        .reshape([b, h, t, d / 2, 2])
        .swap_dims(3, 4)
        .reshape([b, h, t, d]);
    apply_rope(x, cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_repeat_the_angles_over_both_halves() {
        let device = Device::flex();
        let (cos, sin) = rope_tables(3, 2, 4, 10000.0, &device);
        let cos = cos.into_data().try_to_vec::<f32>().unwrap();
        let sin = sin.into_data().try_to_vec::<f32>().unwrap();
        // position 3: angles 3 * [1, 1e-2]; position 4: 4 * [1, 1e-2]
        for (row, p) in [(0usize, 3f32), (1, 4.0)] {
            for (i, f) in [1.0f32, 0.01].into_iter().enumerate() {
                for half in 0..2 {
                    let j = row * 4 + half * 2 + i;
                    assert!((cos[j] - (p * f).cos()).abs() < 1e-6);
                    assert!((sin[j] - (p * f).sin()).abs() < 1e-6);
                }
            }
        }
    }

    #[test]
    fn rotation_at_position_zero_is_the_identity_and_partial_dims_pass_through() {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 2, 6]),
            &device,
        );
        let (cos, sin) = rope_tables(0, 2, 4, 10000.0, &device);
        let y = apply_rope(x.clone(), &cos, &sin)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let x = x.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&y[..6], &x[..6], "position 0 is not rotated");
        assert_eq!(
            &y[10..12],
            &x[10..12],
            "dims past the rotary ones pass through"
        );
        // position 1, pair (x0, x2) = (6, 8) rotated by 1 radian
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((y[6] - (6.0 * c - 8.0 * s)).abs() < 1e-5);
        assert!((y[8] - (8.0 * c + 6.0 * s)).abs() < 1e-5);
    }
}
