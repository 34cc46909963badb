//! MiniMax-M2 (`minimax_m2`): GQA attention with RMSNorm on the whole q and k projections
//! (not per head), partial RoPE over `rotary_dim` dims per head, no biases; every layer a
//! sparse MoE (`block_sparse_moe`, experts `w1`/`w3`/`w2`) routed by sigmoid scores plus a
//! correction bias, top-k weights renormalised, no shared experts.
//! Reference: transformers `models/minimax_m2/modeling_minimax_m2.py`.

use crate::layers::{Expert, Linear};
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer, MoeBlock, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(cfg, w, i, false, false, QkNorm::OverHeads)?;
    let p = format!("model.layers.{i}.block_sparse_moe");
    let (h, inter) = (
        cfg.hidden_size,
        cfg.need(cfg.intermediate_size, "intermediate_size")?,
    );
    let n = cfg.need(cfg.num_experts(), "num_local_experts")?;
    let ffn = FeedForward::Moe(MoeBlock {
        gate: Linear::load(w, &format!("{p}.gate"), h, n, false)?,
        experts: (0..n)
            .map(|e| {
                Expert::load_named(w, &format!("{p}.experts.{e}"), ["w1", "w3", "w2"], h, inter)
            })
            .collect::<Result<_, _>>()?,
        shared_experts: None,
        top_k: cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?,
        // one group: plain top-k on sigmoid + bias, weights always renormalised, no scale
        router: Router::SigmoidGrouped {
            bias: w.read(&format!("{p}.e_score_correction_bias"), &[n])?,
            n_group: 1,
            topk_group: 1,
            norm_topk_prob: true,
            scale: 1.0,
        },
    });
    layer_with(cfg, w, i, attn, ffn)
}
