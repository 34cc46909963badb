//! MiniMax-M2 (`minimax_m2`): GQA attention with RMSNorm on the whole q and k projections
//! (not per head), partial RoPE over `rotary_dim` dims per head, no biases; every layer a
//! sparse MoE (`block_sparse_moe`, experts `w1`/`w3`/`w2`) routed by sigmoid scores plus a
//! correction bias, top-k weights renormalised, no shared experts.
//! Reference: transformers `models/minimax_m2/modeling_minimax_m2.py`.

use crate::load::{QkNorm, block_sparse_moe, layer_with, standard_attention};
use crate::model::{FeedForward, Layer, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(cfg, w, i, false, false, QkNorm::OverHeads)?;
    // one group: plain top-k on sigmoid + bias, weights always renormalised, no scale
    let moe = block_sparse_moe(cfg, w, i, |p, n| {
        Ok(Router::SigmoidGrouped {
            bias: w.read(&format!("{p}.e_score_correction_bias"), &[n])?,
            n_group: 1,
            topk_group: 1,
            norm_topk_prob: true,
            scale: 1.0,
        })
    })?;
    layer_with(cfg, w, i, attn, FeedForward::Moe(moe))
}
