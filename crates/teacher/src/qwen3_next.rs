//! Qwen3-Next (`qwen3_next`, the design Qwen3.5 shares): layers of Gated DeltaNet linear
//! attention ([`crate::delta_net`]) and gated full attention, as `layer_types` (or
//! `full_attention_interval`) says. Full attention is GQA with per-head q/k RMSNorm, partial
//! RoPE (`partial_rotary_factor`, default 0.25) and a sigmoid output gate from the second half
//! of each query head. Every RMSNorm but the DeltaNet's output norm is zero-centred
//! (`x * (1 + w)`). Feed-forwards are softmax-routed experts plus a shared expert scaled by
//! `sigmoid(shared_expert_gate(x))`, or dense on `mlp_only_layers` / off `decoder_sparse_step`.
//! Multi-token-prediction weights (`mtp.*`) are not used. Fields absent from config.json take
//! transformers' `Qwen3NextConfig` defaults.
//! Reference: transformers `models/qwen3_next/modeling_qwen3_next.py`.

use crate::delta_net::GatedDeltaNet;
use crate::layers::{Expert, Linear, Mlp, RmsNorm};
use crate::model::{Attention, Block, FeedForward, Layer, MoeBlock, Router, StandardAttention};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let p = format!("model.layers.{i}");
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps());
    let linear = cfg
        .layer_types
        .as_ref()
        .is_some_and(|t| t[i] == "linear_attention");
    let attn = if linear {
        Attention::DeltaNet(GatedDeltaNet::load(
            w,
            &format!("{p}.linear_attn"),
            h,
            cfg.linear_num_key_heads.unwrap_or(16),
            cfg.linear_num_value_heads.unwrap_or(32),
            cfg.linear_key_head_dim.unwrap_or(128),
            cfg.linear_value_head_dim.unwrap_or(128),
            cfg.linear_conv_kernel_dim.unwrap_or(4),
            eps,
        )?)
    } else {
        gated_attention(cfg, w, &format!("{p}.self_attn"))?
    };
    let m = format!("{p}.mlp");
    let n_experts = cfg.num_experts().unwrap_or(512);
    let sparse_step = cfg.decoder_sparse_step.unwrap_or(1).max(1);
    let dense_only = cfg.mlp_only_layers.as_deref().unwrap_or(&[]).contains(&i);
    let ffn = if !dense_only && n_experts > 0 && (i + 1) % sparse_step == 0 {
        let inter = cfg.moe_intermediate_size.unwrap_or(512);
        FeedForward::Moe(MoeBlock {
            gate: Linear::load(w, &format!("{m}.gate"), h, n_experts, false)?,
            experts: (0..n_experts)
                .map(|e| Expert::load(w, &format!("{m}.experts.{e}"), h, inter))
                .collect::<Result<_, _>>()?,
            shared_experts: Some(Mlp::load(
                w,
                &format!("{m}.shared_expert"),
                h,
                cfg.shared_expert_intermediate_size.unwrap_or(512),
            )?),
            shared_expert_gate: Some(Linear::load(
                w,
                &format!("{m}.shared_expert_gate"),
                h,
                1,
                false,
            )?),
            top_k: cfg.num_experts_per_tok.unwrap_or(10),
            router: Router::Softmax {
                norm_topk_prob: cfg.norm_topk_prob.unwrap_or(true),
            },
        })
    } else {
        FeedForward::Dense(Mlp::load(w, &m, h, cfg.intermediate_size.unwrap_or(5632))?)
    };
    let norm = |name: &str| RmsNorm::load_centred(w, &format!("{p}.{name}.weight"), h, eps);
    Ok(Layer::PreNorm(Block {
        input_layernorm: norm("input_layernorm")?,
        attn,
        post_attention_layernorm: norm("post_attention_layernorm")?,
        ffn,
    }))
}

/// Full attention with an output gate: `q_proj` gives `[query, gate]` per head.
fn gated_attention(cfg: &HfConfig, w: &Weights, p: &str) -> Result<Attention, TeacherError> {
    let (h, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads(),
        cfg.head_dim(),
    );
    let bias = cfg.attention_bias.unwrap_or(false);
    let eps = cfg.rms_norm_eps();
    Ok(Attention::Standard(StandardAttention {
        q_proj: Linear::load(w, &format!("{p}.q_proj"), h, 2 * nh * hd, bias)?,
        k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, bias)?,
        v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, bias)?,
        o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, bias)?,
        q_norm: Some(RmsNorm::load_centred(
            w,
            &format!("{p}.q_norm.weight"),
            hd,
            eps,
        )?),
        k_norm: Some(RmsNorm::load_centred(
            w,
            &format!("{p}.k_norm.weight"),
            hd,
            eps,
        )?),
        qk_norm_over_heads: false,
        output_gate: true,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        sliding_window: None,
    }))
}
