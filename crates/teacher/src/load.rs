//! Loading a teacher directory: config, tokenizer check, weights, one architecture file per model type.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use crate::layers::{Linear, RmsNorm};
use crate::model::{Attention, Layer, StandardAttention, Teacher};
use crate::{
    Arch, HfConfig, TeacherError, Weights, deepseek_v3, llama, mixtral, qwen2, qwen3, qwen3_moe,
};

/// Load the teacher at `dir` (`config.json` + safetensors) onto `device`, computing in `dtype`
/// (`DType::F32`, or `DType::BF16` to halve memory). Every tensor the architecture needs must be
/// present with the right shape, and every tensor present must be used.
pub fn load_teacher(dir: &Path, device: &Device, dtype: DType) -> Result<Teacher, TeacherError> {
    let config = HfConfig::load(&dir.join("config.json"))?;
    let w = Weights::open(dir, device, dtype)?;
    let (v, h) = (config.vocab_size, config.hidden_size);
    let embed_tokens = w.get("model.embed_tokens.weight", [v, h])?;
    let layers = (0..config.num_hidden_layers)
        .map(|i| match config.arch {
            Arch::Llama => llama::layer(&config, &w, i),
            Arch::Qwen2 => qwen2::layer(&config, &w, i),
            Arch::Qwen3 => qwen3::layer(&config, &w, i),
            Arch::Qwen3Moe => qwen3_moe::layer(&config, &w, i),
            Arch::Mixtral => mixtral::layer(&config, &w, i),
            Arch::DeepseekV3 => deepseek_v3::layer(&config, &w, i),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let norm = RmsNorm::load(&w, "model.norm.weight", h, config.rms_norm_eps)?;
    let lm_head = if config.tie_word_embeddings && !w.contains("lm_head.weight") {
        embed_tokens.clone().transpose()
    } else {
        w.get("lm_head.weight", [v, h])?.transpose()
    };
    // Derived buffers, and DeepSeek's multi-token-prediction layers (indices past
    // num_hidden_layers), which next-token logits do not use.
    let is_mtp = |k: &str| {
        config.arch == Arch::DeepseekV3
            && k.strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= config.num_hidden_layers)
    };
    let unused: Vec<String> = w
        .unused()
        .into_iter()
        .filter(|k| !k.ends_with("rotary_emb.inv_freq") && !is_mtp(k))
        .collect();
    if !unused.is_empty() {
        return Err(TeacherError::Config {
            path: dir.join("config.json"),
            message: format!(
                "{} checkpoint tensors are not used by this config, e.g. {:?}; does config.json match the weights?",
                unused.len(),
                &unused[..unused.len().min(5)]
            ),
        });
    }
    Ok(Teacher {
        config,
        embed_tokens,
        layers,
        norm,
        lm_head,
    })
}

/// Pre-norm decoder layer around `attn` and `ffn`, with HF's norm names.
pub(crate) fn layer_with(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    attn: Attention,
    ffn: crate::model::FeedForward,
) -> Result<Layer, TeacherError> {
    let p = format!("model.layers.{i}");
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    Ok(Layer {
        input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm.weight"), h, eps)?,
        attn,
        post_attention_layernorm: RmsNorm::load(
            w,
            &format!("{p}.post_attention_layernorm.weight"),
            h,
            eps,
        )?,
        ffn,
    })
}

/// Standard GQA attention at `model.layers.{i}.self_attn`.
pub(crate) fn standard_attention(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    qkv_bias: bool,
    o_bias: bool,
    qk_norm: bool,
) -> Result<Attention, TeacherError> {
    let p = format!("model.layers.{i}.self_attn");
    let (h, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads(),
        cfg.head_dim(),
    );
    let norm = |name: &str| RmsNorm::load(w, &format!("{p}.{name}.weight"), hd, cfg.rms_norm_eps);
    Ok(Attention::Standard(StandardAttention {
        q_proj: Linear::load(w, &format!("{p}.q_proj"), h, nh * hd, qkv_bias)?,
        k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, qkv_bias)?,
        v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, qkv_bias)?,
        o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, o_bias)?,
        q_norm: if qk_norm { Some(norm("q_norm")?) } else { None },
        k_norm: if qk_norm { Some(norm("k_norm")?) } else { None },
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        rope_theta: cfg.rope_theta(),
        sliding_window: if cfg.use_sliding_window == Some(false) {
            None
        } else {
            cfg.sliding_window
        },
    }))
}
