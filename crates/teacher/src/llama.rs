//! Llama (Meta Llama 2/3 and everything in its layout).
//! Reference: transformers `models/llama/modeling_llama.py`.

use crate::layers::Mlp;
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let bias = cfg.attention_bias.unwrap_or(false);
    let attn = standard_attention(cfg, w, i, bias, bias, QkNorm::None)?;
    let inter = cfg.need(cfg.intermediate_size, "intermediate_size")?;
    let mlp = Mlp::load(w, &format!("model.layers.{i}.mlp"), cfg.hidden_size, inter)?;
    layer_with(cfg, w, i, attn, FeedForward::Dense(mlp))
}
