//! Mixtral: Llama attention with a sparse MoE in every layer (`block_sparse_moe`);
//! softmax over all experts, top-k, always renormalised. Experts use `w1` (gate),
//! `w3` (up), `w2` (down). `sliding_window`, when set, limits attention to that many keys.
//! Reference: transformers `models/mixtral/modeling_mixtral.py`.

use crate::layers::{Expert, Linear};
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer, MoeBlock, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(cfg, w, i, false, false, QkNorm::None)?;
    let p = format!("model.layers.{i}.block_sparse_moe");
    let (h, inter) = (
        cfg.hidden_size,
        cfg.need(cfg.intermediate_size, "intermediate_size")?,
    );
    let n_experts = cfg.need(cfg.num_experts(), "num_local_experts")?;
    let ffn = FeedForward::Moe(MoeBlock {
        gate: Linear::load(w, &format!("{p}.gate"), h, n_experts, false)?,
        experts: (0..n_experts)
            .map(|e| {
                Expert::load_named(w, &format!("{p}.experts.{e}"), ["w1", "w3", "w2"], h, inter)
            })
            .collect::<Result<_, _>>()?,
        shared_experts: None,
        top_k: cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?,
        router: Router::Softmax {
            norm_topk_prob: true,
        },
    });
    layer_with(cfg, w, i, attn, ffn)
}
