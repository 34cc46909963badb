//! DeepSeek Sparse Attention (DSA), the "lightning indexer" of DeepSeek-V3.2: a few cheap
//! heads score every visible key for each query, `index(s, t) = sum_h w_h(s) relu(q_h(s) . k(t)
//! / sqrt(d))` with per-query head weights `w = weights_proj(x) / sqrt(heads)`, and the query
//! attends only to its `index_topk` best keys. Keys are `LayerNorm(wk(x))`, queries come from
//! the attention's query latent (`q_a_layernorm(q_a_proj(x))`); both rotate their first
//! `qk_rope_head_dim` dims with non-interleaved RoPE (unlike MLA's interleaved layout).
//! Reference: transformers `models/deepseek_v32/modeling_deepseek_v32.py` (`DeepseekV32Indexer`),
//! which computes the reference kernel's scores without its Hadamard rotation (orthogonal, so
//! the dot products are the same) and FP8 rounding.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;

use crate::layers::{LayerNorm, Linear, apply_rope};
use crate::{TeacherError, Weights};

pub struct Indexer {
    /// `[q_lora_rank -> heads * head_dim]`
    pub wq_b: Linear,
    /// `[hidden -> head_dim]`
    pub wk: Linear,
    pub k_norm: LayerNorm,
    /// `[hidden -> heads]`
    pub weights_proj: Linear,
    pub heads: usize,
    pub head_dim: usize,
    /// Keys each query keeps.
    pub topk: usize,
}

impl Indexer {
    /// The indexer at `<prefix>` (`wq_b`, `wk`, `k_norm`, `weights_proj`).
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        q_lora_rank: usize,
        heads: usize,
        head_dim: usize,
        topk: usize,
    ) -> Result<Self, TeacherError> {
        Ok(Self {
            wq_b: Linear::load(
                w,
                &format!("{prefix}.wq_b"),
                q_lora_rank,
                heads * head_dim,
                false,
            )?,
            wk: Linear::load(w, &format!("{prefix}.wk"), hidden, head_dim, false)?,
            k_norm: LayerNorm::load(w, &format!("{prefix}.k_norm"), head_dim, 1e-6)?,
            weights_proj: Linear::load(w, &format!("{prefix}.weights_proj"), hidden, heads, false)?,
            heads,
            head_dim,
            topk,
        })
    }

    /// Index keys of `x: [b, t, hidden]` after RoPE, `[b, 1, t, head_dim]` (what a cache keeps).
    pub fn keys(&self, x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
        let [b, t, _] = x.dims();
        let dtype = x.dtype();
        let k = self
            .k_norm
            .forward(self.wk.forward(x))
            .cast(dtype)
            .reshape([b, 1, t, self.head_dim]);
        apply_rope(k, cos, sin)
    }

    /// Add to `mask` (`[b, 1, tq, tk]`, true = masked) every key outside each query's top
    /// `index_topk` by index score among the keys `mask` leaves visible. `keys` are all `tk`
    /// index keys (cached ones first), `q_latent` the attention's query latent `[b, tq, rank]`.
    /// Keys tied with the k-th score are all kept (transformers' `topk` picks one of them in
    /// an unspecified order).
    pub fn restrict(
        &self,
        x: Tensor<3>,
        q_latent: Tensor<3>,
        keys: Tensor<4>,
        (cos, sin): (&Tensor<2>, &Tensor<2>),
        mask: Tensor<4, Bool>,
    ) -> Tensor<4, Bool> {
        let [b, t, _] = x.dims();
        let tk = keys.dims()[2];
        let k = self.topk.min(tk);
        if k == tk {
            return mask;
        }
        let (nh, hd) = (self.heads, self.head_dim);
        let q = self
            .wq_b
            .forward(q_latent)
            .reshape([b, t, nh, hd])
            .swap_dims(1, 2);
        let q = apply_rope(q, cos, sin).cast(DType::F32);
        let keys = keys
            .cast(DType::F32)
            .swap_dims(2, 3)
            .expand([b, nh, hd, tk]);
        // [b, heads, tq, tk]
        let scores = relu(q.matmul(keys).mul_scalar((hd as f64).powf(-0.5)));
        let weights = self
            .weights_proj
            .forward(x)
            .cast(DType::F32)
            .mul_scalar((nh as f64).powf(-0.5))
            .swap_dims(1, 2)
            .reshape([b, nh, t, 1]);
        let index = (scores * weights.expand([b, nh, t, tk]))
            .sum_dim(1)
            .mask_fill(mask.clone(), f32::NEG_INFINITY);
        let kth = index.clone().topk(k, 3).narrow(3, k - 1, 1);
        let keep = index.greater_equal(kth.expand([b, 1, t, tk]));
        mask.bool_or(keep.bool_not())
    }
}
