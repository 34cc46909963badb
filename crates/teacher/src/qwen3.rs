//! Qwen3 (dense): per-head RMSNorm on queries and keys before RoPE, no q/k/v bias.
//! Reference: transformers `models/qwen3/modeling_qwen3.py`.

use crate::layers::Mlp;
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let bias = cfg.attention_bias.unwrap_or(false);
    let attn = standard_attention(cfg, w, i, bias, bias, QkNorm::PerHead)?;
    let inter = cfg.need(cfg.intermediate_size, "intermediate_size")?;
    let mlp = Mlp::load(w, &format!("model.layers.{i}.mlp"), cfg.hidden_size, inter)?;
    layer_with(cfg, w, i, attn, FeedForward::Dense(mlp))
}
