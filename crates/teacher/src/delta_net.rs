//! Gated DeltaNet, the linear-attention layer of Qwen3-Next (and Qwen3.5): projections to
//! queries, keys, values, an output gate `z`, a write strength `beta` and a decay `g`; a
//! causal depthwise conv1d (SiLU) over `[q, k, v]`; then the gated delta rule on a
//! `[key_dim, value_dim]` state per value head,
//!
//! `S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T`, `o_t = S_t^T q_t`,
//!
//! with L2-normalised q, k and q scaled by `1/sqrt(d_k)`; the output RMS-normalised per head
//! and gated by `silu(z)`. The recurrence runs in chunks (the WY/UT form transformers' torch
//! reference and flash-linear-attention use): within a chunk a triangular solve and a few
//! matmuls, across chunks one state update each.
//! Reference: transformers `models/qwen3_next/modeling_qwen3_next.py` (`Qwen3NextGatedDeltaNet`,
//! `torch_chunk_gated_delta_rule`).

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{sigmoid, silu, softplus};

use crate::layers::{Linear, RmsNorm};
use crate::{TeacherError, Weights};

/// Positions per chunk of the chunked recurrence (transformers' default).
const CHUNK: usize = 64;

pub struct GatedDeltaNet {
    /// `[hidden -> 2 * key_dim + 2 * value_dim]`, grouped per key head: q, k, v, z.
    pub in_proj_qkvz: Linear,
    /// `[hidden -> 2 * value_heads]`, grouped per key head: beta, a.
    pub in_proj_ba: Linear,
    /// Depthwise causal conv1d weights `[channels, kernel]` over `[q, k, v]`.
    pub conv: Tensor<2>,
    pub dt_bias: Tensor<1>,
    pub a_log: Tensor<1>,
    /// Per-head RMSNorm of the output, before the `silu(z)` gate.
    pub norm: RmsNorm,
    pub out_proj: Linear,
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub kernel: usize,
}

/// What a Gated DeltaNet layer carries from one call to the next when decoding.
pub struct DeltaState {
    /// The last `kernel - 1` conv inputs `[b, kernel - 1, channels]`.
    pub conv: Tensor<3>,
    /// `[b, value_heads, key_dim, value_dim]`, float32.
    pub recurrent: Tensor<4>,
}

impl GatedDeltaNet {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        key_heads: usize,
        value_heads: usize,
        key_dim: usize,
        value_dim: usize,
        kernel: usize,
        eps: f64,
    ) -> Result<Self, TeacherError> {
        let (kd, vd) = (key_heads * key_dim, value_heads * value_dim);
        let channels = 2 * kd + vd;
        let conv: Tensor<3> = w.get(&format!("{prefix}.conv1d.weight"), [channels, 1, kernel])?;
        Ok(Self {
            in_proj_qkvz: Linear::load(
                w,
                &format!("{prefix}.in_proj_qkvz"),
                hidden,
                2 * kd + 2 * vd,
                false,
            )?,
            in_proj_ba: Linear::load(
                w,
                &format!("{prefix}.in_proj_ba"),
                hidden,
                2 * value_heads,
                false,
            )?,
            conv: conv.reshape([channels, kernel]),
            dt_bias: w.get(&format!("{prefix}.dt_bias"), [value_heads])?,
            a_log: w.get(&format!("{prefix}.A_log"), [value_heads])?,
            norm: RmsNorm::load(w, &format!("{prefix}.norm.weight"), value_dim, eps)?,
            out_proj: Linear::load(w, &format!("{prefix}.out_proj"), vd, hidden, false)?,
            key_heads,
            value_heads,
            key_dim,
            value_dim,
            kernel,
        })
    }

    /// `x: [b, t, hidden]`; `pad` (`[b, t]`, true = padding) zeroes padded inputs, as
    /// transformers does; `state` continues a previous call and is updated.
    pub fn forward(
        &self,
        x: Tensor<3>,
        pad: Option<&Tensor<2, Bool>>,
        state: Option<&mut Option<DeltaState>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let dtype = x.dtype();
        let device = x.device();
        let (nk, nv, dk, dv) = (
            self.key_heads,
            self.value_heads,
            self.key_dim,
            self.value_dim,
        );
        let r = nv / nk;
        let x = match pad {
            Some(pad) if t > 1 => {
                let keep = pad
                    .clone()
                    .bool_not()
                    .float()
                    .cast(dtype)
                    .reshape([b, t, 1]);
                x * keep
            }
            _ => x,
        };
        let qkvz = self
            .in_proj_qkvz
            .forward(x.clone())
            .reshape([b, t, nk, 2 * dk + 2 * r * dv]);
        let q = qkvz.clone().narrow(3, 0, dk).reshape([b, t, nk * dk]);
        let k = qkvz.clone().narrow(3, dk, dk).reshape([b, t, nk * dk]);
        let v = qkvz
            .clone()
            .narrow(3, 2 * dk, r * dv)
            .reshape([b, t, nv * dv]);
        let z = qkvz
            .narrow(3, 2 * dk + r * dv, r * dv)
            .reshape([b, t, nv, dv]);
        let ba = self.in_proj_ba.forward(x).reshape([b, t, nk, 2 * r]);
        let beta = sigmoid(
            ba.clone()
                .narrow(3, 0, r)
                .reshape([b, t, nv])
                .cast(DType::F32),
        );
        let a = ba.narrow(3, r, r).reshape([b, t, nv]).cast(DType::F32);

        // causal depthwise conv over [q, k, v], continuing the cached inputs
        let mixed = Tensor::cat(vec![q, k, v], 2);
        let channels = mixed.dims()[2];
        let (prev, recurrent) = match state.as_ref().and_then(|s| s.as_ref()) {
            Some(s) => (s.conv.clone(), Some(s.recurrent.clone())),
            None => (
                Tensor::zeros([b, self.kernel - 1, channels], (&device, dtype)),
                None,
            ),
        };
        let full = Tensor::cat(vec![prev, mixed], 1);
        let conv_state = full.clone().narrow(1, t, self.kernel - 1);
        let mut conv = Tensor::<3>::zeros([b, t, channels], (&device, dtype));
        for j in 0..self.kernel {
            let wj = self.conv.clone().narrow(1, j, 1).reshape([1, 1, channels]);
            conv = conv + full.clone().narrow(1, j, t) * wj.expand([b, t, channels]);
        }
        let conv = silu(conv);
        let (kd, vd) = (nk * dk, nv * dv);
        let q = conv.clone().narrow(2, 0, kd).reshape([b, t, nk, dk]);
        let k = conv.clone().narrow(2, kd, kd).reshape([b, t, nk, dk]);
        let v = conv.narrow(2, 2 * kd, vd).reshape([b, t, nv, dv]);

        let decay = softplus(
            a + self.dt_bias.clone().cast(DType::F32).reshape([1, 1, nv]),
            1.0,
        ) * self
            .a_log
            .clone()
            .cast(DType::F32)
            .exp()
            .neg()
            .reshape([1, 1, nv]);
        let (out, recurrent) = gated_delta_rule(q, k, v, decay, beta, recurrent);
        if let Some(slot) = state {
            *slot = Some(DeltaState {
                conv: conv_state,
                recurrent,
            });
        }
        // per-head RMSNorm, then the silu(z) gate in float32
        let normed = self.norm.forward(out.cast(dtype)).cast(DType::F32);
        let y = (normed * silu(z.cast(DType::F32))).cast(dtype);
        self.out_proj.forward(y.reshape([b, t, vd]))
    }
}

/// The gated delta rule on `q, k: [b, t, key_heads, dk]`, `v: [b, t, value_heads, dv]`,
/// `decay` (log space, <= 0) and `beta`: `[b, t, value_heads]`; each key head serves
/// `value_heads / key_heads` consecutive value heads. Returns the outputs `[b, t, value_heads,
/// dv]` (float32) and the final state `[b, value_heads, dk, dv]`, starting from `initial`.
pub fn gated_delta_rule(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    decay: Tensor<3>,
    beta: Tensor<3>,
    initial: Option<Tensor<4>>,
) -> (Tensor<4>, Tensor<4>) {
    let [b, t, nk, dk] = q.dims();
    let [_, _, nv, dv] = v.dims();
    let device = q.device();
    let r = nv / nk;
    let heads = |x: Tensor<4>| {
        x.cast(DType::F32)
            .unsqueeze_dim::<5>(3)
            .expand([b, t, nk, r, dk])
            .reshape([b, t, nv, dk])
            .swap_dims(1, 2)
    };
    let l2norm = |x: Tensor<4>| {
        let inv = (x.clone().square().sum_dim(3) + 1e-6).sqrt().recip();
        x * inv
    };
    // [b, heads, t, d]
    let q = l2norm(heads(q)).mul_scalar((dk as f64).powf(-0.5));
    let k = l2norm(heads(k));
    let v = v.cast(DType::F32).swap_dims(1, 2);
    let decay = decay.swap_dims(1, 2);
    let beta = beta.swap_dims(1, 2);

    let c = CHUNK.min(t);
    let pad = (c - t % c) % c;
    let n = (t + pad) / c;
    let pad4 = |x: Tensor<4>| {
        if pad == 0 {
            return x;
        }
        let [b, h, _, d] = x.dims();
        Tensor::cat(vec![x, Tensor::zeros([b, h, pad, d], &device)], 2)
    };
    let pad3 = |x: Tensor<3>| {
        if pad == 0 {
            return x;
        }
        Tensor::cat(vec![x, Tensor::zeros([b, nv, pad], &device)], 2)
    };
    let (q, k, v, decay, beta) = (pad4(q), pad4(k), pad4(v), pad3(decay), pad3(beta));
    let chunks = |x: Tensor<4>| {
        let d = x.dims()[3];
        x.reshape([b, nv, n, c, d])
    };
    let beta = beta.reshape([b, nv, n, c, 1]);
    let v_beta = chunks(v) * beta.clone().expand([b, nv, n, c, dv]);
    let k_beta = chunks(k.clone()) * beta.expand([b, nv, n, c, dk]);
    let (q, k) = (chunks(q), chunks(k));
    let cum = decay.reshape([b, nv, n, c]).cumsum(3);
    let shape = [b, nv, n, c, c];
    // pairwise[i, j] = exp(cum_i - cum_j) for j <= i, else 0
    let upper = Tensor::<2, Bool>::tril_mask([c, c], 0, &device)
        .reshape([1, 1, 1, c, c])
        .expand(shape);
    let pairwise = (cum.clone().reshape([b, nv, n, c, 1]).expand(shape)
        - cum.clone().reshape([b, nv, n, 1, c]).expand(shape))
    .mask_fill(upper, f32::NEG_INFINITY)
    .exp();
    let k_t = k.clone().swap_dims(3, 4);
    let ut = k_beta.clone().matmul(k_t.clone()) * pairwise.clone();
    let intra = q.clone().matmul(k_t) * pairwise;
    let cum_exp = cum.clone().exp().reshape([b, nv, n, c, 1]);
    let decayed_k_beta = k_beta * cum_exp.clone().expand([b, nv, n, c, dk]);

    // (I + L) X = [v_beta, decayed k_beta], L the strictly lower part of ut, by forward
    // substitution over the rows of every chunk at once
    let on_or_above = Tensor::<2, Bool>::tril_mask([c, c], -1, &device)
        .reshape([1, 1, 1, c, c])
        .expand(shape);
    let lower = ut.mask_fill(on_or_above, 0.0);
    let rhs = Tensor::cat(vec![v_beta, decayed_k_beta], 4);
    let w = dv + dk;
    let mut x = rhs.clone();
    for i in 1..c {
        let row = lower.clone().narrow(3, i, 1).matmul(x.clone());
        let xi = rhs.clone().narrow(3, i, 1) - row;
        x = x.slice_assign([0..b, 0..nv, 0..n, i..i + 1, 0..w], xi);
    }
    let new_values = x.clone().narrow(4, 0, dv);
    let k_cumdecay = x.narrow(4, dv, dk);

    let q = q * cum_exp.expand([b, nv, n, c, dk]);
    let last = cum.clone().narrow(3, c - 1, 1);
    let k = k
        * (last.clone().expand([b, nv, n, c]) - cum)
            .exp()
            .reshape([b, nv, n, c, 1])
            .expand([b, nv, n, c, dk]);
    let chunk_decay = last.exp().reshape([b, nv, n, 1, 1]);
    let mut state = initial.unwrap_or_else(|| Tensor::zeros([b, nv, dk, dv], &device));
    let mut outs = Vec::with_capacity(n);
    let at = |x: &Tensor<5>, i: usize| {
        let d = x.dims()[4];
        let e = x.dims()[3];
        x.clone().narrow(2, i, 1).reshape([b, nv, e, d])
    };
    for i in 0..n {
        let v_new = at(&new_values, i) - at(&k_cumdecay, i).matmul(state.clone());
        outs.push(at(&q, i).matmul(state.clone()) + at(&intra, i).matmul(v_new.clone()));
        let cd = at(&chunk_decay, i).expand([b, nv, dk, dv]);
        state = state * cd + at(&k, i).swap_dims(2, 3).matmul(v_new);
    }
    let out = Tensor::cat(outs, 2).narrow(2, 0, t).swap_dims(1, 2);
    (out, state)
}
