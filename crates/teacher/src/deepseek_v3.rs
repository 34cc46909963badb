//! DeepSeek-V3: multi-head latent attention (low-rank queries, compressed shared
//! key/value latent, decoupled RoPE slice, interleaved rotary layout), the first
//! `first_k_dense_replace` layers dense, the rest routed experts plus shared experts
//! with sigmoid, bias-corrected, group-limited routing.
//! Reference: transformers `models/deepseek_v3/modeling_deepseek_v3.py`.

use crate::layers::{Linear, Mlp, RmsNorm};
use crate::load::layer_with;
use crate::model::{Attention, FeedForward, LatentAttention, Layer, MoeBlock, QueryPath, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let attn = Attention::Latent(latent_attention(cfg, w, i)?);
    let p = format!("model.layers.{i}.mlp");
    let h = cfg.hidden_size;
    let ffn = if i >= cfg.first_k_dense_replace.unwrap_or(0) {
        let n = cfg.need(cfg.num_experts(), "n_routed_experts")?;
        let inter = cfg.need(cfg.moe_intermediate_size, "moe_intermediate_size")?;
        let n_group = cfg.n_group.unwrap_or(1);
        if n % n_group != 0 {
            return Err(TeacherError::Invalid(format!(
                "n_routed_experts {n} is not divisible by n_group {n_group}"
            )));
        }
        let bias = w.read(&format!("{p}.gate.e_score_correction_bias"), &[n])?;
        let shared = cfg.n_shared_experts.unwrap_or(0);
        FeedForward::Moe(MoeBlock {
            gate: Linear::load(w, &format!("{p}.gate"), h, n, false)?,
            experts: (0..n)
                .map(|e| Mlp::load(w, &format!("{p}.experts.{e}"), h, inter))
                .collect::<Result<_, _>>()?,
            shared_experts: if shared > 0 {
                Some(Mlp::load(
                    w,
                    &format!("{p}.shared_experts"),
                    h,
                    inter * shared,
                )?)
            } else {
                None
            },
            top_k: cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?,
            router: Router::SigmoidGrouped {
                bias,
                n_group,
                topk_group: cfg.topk_group.unwrap_or(1),
                norm_topk_prob: cfg.norm_topk_prob.unwrap_or(true),
                scale: cfg.routed_scaling_factor.unwrap_or(1.0) as f32,
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

fn latent_attention(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
) -> Result<LatentAttention, TeacherError> {
    let p = format!("model.layers.{i}.self_attn");
    let h = cfg.hidden_size;
    let nh = cfg.num_attention_heads;
    let nope = cfg.need(cfg.qk_nope_head_dim, "qk_nope_head_dim")?;
    let rope = cfg.need(cfg.qk_rope_head_dim, "qk_rope_head_dim")?;
    let vd = cfg.need(cfg.v_head_dim, "v_head_dim")?;
    let kv_rank = cfg.need(cfg.kv_lora_rank, "kv_lora_rank")?;
    let bias = cfg.attention_bias.unwrap_or(false);
    // DeepSeek's latent norms use a fixed epsilon, not rms_norm_eps
    let eps = 1e-6;
    let q = match cfg.q_lora_rank {
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
        rope_theta: cfg.rope_theta(),
        rope_interleave: cfg.rope_interleave.unwrap_or(true),
        softmax_scale: 1.0 / ((nope + rope) as f64).sqrt(),
    })
}
