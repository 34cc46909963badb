//! DeepSeek-V3.2 (`deepseek_v32`): DeepSeek-V3's multi-head latent attention with DeepSeek
//! Sparse Attention, the lightning indexer choosing each query's `index_topk` keys
//! ([`crate::dsa`]); routed experts as DeepSeek-V3 (sigmoid scores, correction bias, groups,
//! shared experts), the dense/sparse layer pattern from `mlp_layer_types` or
//! `first_k_dense_replace`. Fields absent from config.json take transformers'
//! `DeepseekV32Config` defaults.
//! Reference: transformers `models/deepseek_v32/modeling_deepseek_v32.py`.

use crate::deepseek_v3::{DEFAULTS, latent_attention};
use crate::dsa::Indexer;
use crate::load::{deepseek_ffn, layer_with};
use crate::model::{Attention, Layer, QueryPath};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let p = format!("model.layers.{i}.self_attn");
    let mut attn = latent_attention(cfg, w, &p)?;
    let QueryPath::LowRank { a, .. } = &attn.q else {
        unreachable!("deepseek_v32 refuses q_lora_rank null")
    };
    let q_lora_rank = a.d_out();
    attn.indexer = Some(Indexer::load(
        w,
        &format!("{p}.indexer"),
        cfg.hidden_size,
        q_lora_rank,
        cfg.index_n_heads.unwrap_or(64),
        cfg.index_head_dim.unwrap_or(128),
        cfg.index_topk.unwrap_or(2048),
    )?);
    let sparse = match cfg.raw.get("mlp_layer_types").and_then(|v| v.as_array()) {
        Some(types) => types[i].as_str() == Some("sparse"),
        None => {
            i >= cfg
                .first_k_dense_replace
                .unwrap_or(DEFAULTS.first_k_dense_replace)
        }
    };
    let ffn = deepseek_ffn(cfg, w, i, &DEFAULTS, sparse)?;
    layer_with(cfg, w, i, Attention::Latent(attn), ffn)
}
