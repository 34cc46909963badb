//! Qwen2 / Qwen2.5: Llama with biases on the q, k and v projections; with
//! `use_sliding_window`, the layers `layer_types` (or `max_window_layers`) marks attend
//! to the last `sliding_window` keys.
//! Reference: transformers `models/qwen2/modeling_qwen2.py`.

use crate::layers::Mlp;
use crate::load::{QkNorm, layer_with, standard_attention};
use crate::model::{FeedForward, Layer};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = standard_attention(cfg, w, i, true, false, QkNorm::None)?;
    let inter = cfg.need(cfg.intermediate_size, "intermediate_size")?;
    let mlp = Mlp::load(w, &format!("model.layers.{i}.mlp"), cfg.hidden_size, inter)?;
    layer_with(cfg, w, i, attn, FeedForward::Dense(mlp))
}
