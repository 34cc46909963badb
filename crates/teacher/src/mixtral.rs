//! Mixtral: Llama attention with a sparse MoE in every layer (`block_sparse_moe`);
//! softmax over all experts, top-k, always renormalised. Experts use `w1` (gate),
//! `w3` (up), `w2` (down). `sliding_window`, when set, limits attention to that many keys.
//! Reference: transformers `models/mixtral/modeling_mixtral.py`.

use crate::load::{QkNorm, block_sparse_moe, layer_with, standard_attention};
use crate::model::{FeedForward, Layer, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(cfg, w, i, false, false, QkNorm::None)?;
    let moe = block_sparse_moe(cfg, w, i, |_, _| {
        Ok(Router::Softmax {
            norm_topk_prob: true,
        })
    })?;
    layer_with(cfg, w, i, attn, FeedForward::Moe(moe))
}
