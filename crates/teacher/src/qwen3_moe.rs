//! Qwen3-MoE: Qwen3 attention (q/k norms) with routed experts; softmax routing over all
//! experts, top-k, renormalised when `norm_topk_prob`. Layers in `mlp_only_layers`, or off
//! the `decoder_sparse_step` rhythm, keep a dense MLP.
//! Reference: transformers `models/qwen3_moe/modeling_qwen3_moe.py`.

use crate::layers::{Expert, Linear, Mlp};
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer, MoeBlock, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(
        cfg,
        w,
        i,
        cfg.attention_bias.unwrap_or(false),
        cfg.attention_bias.unwrap_or(false),
        QkNorm::PerHead,
    )?;
    let p = format!("model.layers.{i}.mlp");
    let h = cfg.hidden_size;
    let n_experts = cfg.num_experts().unwrap_or(0);
    let sparse_step = cfg.decoder_sparse_step.unwrap_or(1).max(1);
    let dense_only = cfg.mlp_only_layers.as_deref().unwrap_or(&[]).contains(&i);
    let ffn = if !dense_only && n_experts > 0 && (i + 1) % sparse_step == 0 {
        let inter = cfg.need(cfg.moe_intermediate_size, "moe_intermediate_size")?;
        FeedForward::Moe(MoeBlock {
            gate: Linear::load(w, &format!("{p}.gate"), h, n_experts, false)?,
            experts: (0..n_experts)
                .map(|e| Expert::load(w, &format!("{p}.experts.{e}"), h, inter))
                .collect::<Result<_, _>>()?,
            shared_experts: None,
            shared_expert_gate: None,
            top_k: cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?,
            router: Router::Softmax {
                norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
            },
        })
    } else {
        FeedForward::Dense(Mlp::load(
            w,
            &p,
            h,
            cfg.need(cfg.intermediate_size, "intermediate_size")?,
        )?)
    };
    layer_with(cfg, w, i, attn, ffn)
}
