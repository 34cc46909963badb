//! DeepSeek-V3 (and Moonshot Kimi K2, which ships this architecture as `kimi_k2`):
//! multi-head latent attention (low-rank queries, compressed shared key/value latent,
//! decoupled RoPE slice, interleaved rotary layout, YaRN's softmax-scale correction), the
//! first `first_k_dense_replace` layers dense, the rest routed experts plus shared experts
//! with sigmoid, bias-corrected, group-limited routing. Fields absent from config.json take
//! transformers' `DeepseekV3Config` defaults.
//! Reference: transformers `models/deepseek_v3/modeling_deepseek_v3.py`.

use crate::layers::{Linear, RmsNorm};
use crate::load::{MoeDefaults, first_k_dense_ffn, layer_with};
use crate::model::{Attention, LatentAttention, Layer, QueryPath};
use crate::{HfConfig, TeacherError, Weights};

/// transformers' `DeepseekV3Config` defaults for the router fields.
pub(crate) const DEFAULTS: MoeDefaults = MoeDefaults {
    n_group: 8,
    topk_group: 4,
    routed_scaling_factor: 2.5,
    first_k_dense_replace: 3,
    n_shared_experts: 1,
};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = Attention::Latent(latent_attention(
        cfg,
        w,
        &format!("model.layers.{i}.self_attn"),
    )?);
    let ffn = first_k_dense_ffn(cfg, w, i, &DEFAULTS)?;
    layer_with(cfg, w, i, attn, ffn)
}

/// DeepSeek's multi-head latent attention at `p` (also the MLA of DeepSeek-V3.2 and
/// LongCat-Flash, which add to it).
pub(crate) fn latent_attention(
    cfg: &HfConfig,
    w: &Weights,
    p: &str,
) -> Result<LatentAttention, TeacherError> {
    let h = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let nope = cfg.qk_nope_head_dim.unwrap_or(128);
    let rope = cfg.qk_rope_head_dim.unwrap_or(64);
    let vd = cfg.v_head_dim.unwrap_or(128);
    let kv_rank = cfg.kv_lora_rank.unwrap_or(512);
    let bias = cfg.attention_bias.unwrap_or(false);
    // DeepSeek's latent norms use a fixed epsilon, not rms_norm_eps
    let eps = 1e-6;
    // an absent q_lora_rank is transformers' default 1536; an explicit null means no bottleneck
    let q_lora_rank = if cfg.has("q_lora_rank") {
        cfg.q_lora_rank
    } else {
        Some(1536)
    };
    let q = match q_lora_rank {
        Some(r) => QueryPath::LowRank {
            a: Linear::load(w, &format!("{p}.q_a_proj"), h, r, bias)?,
            norm: RmsNorm::load(w, &format!("{p}.q_a_layernorm.weight"), r, eps)?,
            b: Linear::load(w, &format!("{p}.q_b_proj"), r, nh * (nope + rope), false)?,
        },
        None => QueryPath::Direct(Linear::load(
            w,
            &format!("{p}.q_proj"),
            h,
            nh * (nope + rope),
            false,
        )?),
    };
    let rope_cfg = cfg.rope().map_err(|message| TeacherError::ModelConfig {
        model_type: cfg.model_type.clone(),
        message,
    })?;
    Ok(LatentAttention {
        q,
        kv_a_proj_with_mqa: Linear::load(
            w,
            &format!("{p}.kv_a_proj_with_mqa"),
            h,
            kv_rank + rope,
            bias,
        )?,
        kv_a_layernorm: RmsNorm::load(w, &format!("{p}.kv_a_layernorm.weight"), kv_rank, eps)?,
        kv_b_proj: Linear::load(
            w,
            &format!("{p}.kv_b_proj"),
            kv_rank,
            nh * (nope + vd),
            false,
        )?,
        o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * vd, h, bias)?,
        num_heads: nh,
        qk_nope_head_dim: nope,
        qk_rope_head_dim: rope,
        v_head_dim: vd,
        kv_lora_rank: kv_rank,
        rope_interleave: cfg.rope_interleave.unwrap_or(true),
        softmax_scale: rope_cfg.mla_softmax_correction() / ((nope + rope) as f64).sqrt(),
        q_scale: 1.0,
        kv_scale: 1.0,
        indexer: None,
    })
}
