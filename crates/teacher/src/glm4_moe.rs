//! Zhipu GLM-4.5 / GLM-4.6 (`glm4_moe`): GQA attention with partial RoPE (half of each
//! head unless `partial_rotary_factor` says otherwise), q/k/v bias from `attention_bias`,
//! optional per-head q/k RMSNorm (`use_qk_norm`); the first `first_k_dense_replace` layers
//! dense, the rest DeepSeek-style sigmoid routing with correction bias plus shared experts.
//! Multi-token-prediction layers (past `num_hidden_layers`) are not used for next-token logits.
//! Reference: transformers `models/glm4_moe/modeling_glm4_moe.py`.

use crate::load::{MoeDefaults, QkNorm, first_k_dense_ffn, layer_with, standard_attention};
use crate::model::Layer;
use crate::{HfConfig, TeacherError, Weights};

/// transformers' `Glm4MoeConfig` defaults for the router fields.
const DEFAULTS: MoeDefaults = MoeDefaults {
    n_group: 1,
    topk_group: 1,
    routed_scaling_factor: 1.0,
    first_k_dense_replace: 1,
    n_shared_experts: 1,
};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let bias = cfg.attention_bias.unwrap_or(false);
    let qk_norm = if cfg.use_qk_norm.unwrap_or(false) {
        QkNorm::PerHead
    } else {
        QkNorm::None
    };
    let attn = standard_attention(cfg, w, i, bias, false, qk_norm)?;
    let ffn = first_k_dense_ffn(cfg, w, i, &DEFAULTS)?;
    layer_with(cfg, w, i, attn, ffn)
}
