//! Meituan LongCat-Flash (`longcat_flash`): each layer holds two pre-norm blocks, each DeepSeek
//! multi-head latent attention (queries scaled by `sqrt(hidden / q_lora_rank)`, the key/value
//! latent by `sqrt(hidden / kv_lora_rank)`) followed by a dense SwiGLU MLP; beside them a
//! shortcut MoE reads the first block's post-attention norm output and its result joins the
//! residual at the end of the layer. The MoE routes over the real experts plus
//! `zero_expert_num` zero-computation (identity) experts: softmax probabilities, the choice
//! on probabilities + correction bias, weights the probabilities times
//! `routed_scaling_factor`. Multi-token-prediction weights (`model.mtp.*`) are not used.
//! Fields absent from config.json take transformers' `LongcatFlashConfig` defaults.
//! Reference: transformers `models/longcat_flash/modeling_longcat_flash.py`.

use crate::deepseek_v3::latent_attention;
use crate::layers::{Expert, Linear, Mlp, RmsNorm};
use crate::model::{Attention, Block, FeedForward, Layer, MoeBlock, QueryPath, Router};
use crate::{HfConfig, TeacherError, Weights};

pub(crate) fn layer(cfg: &HfConfig, w: &Weights, i: usize) -> Result<Layer, TeacherError> {
    let p = format!("model.layers.{i}");
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps());
    let inter = cfg.need(cfg.intermediate_size, "ffn_hidden_size")?;
    let block = |j: usize| -> Result<Block, TeacherError> {
        let mut attn = latent_attention(cfg, w, &format!("{p}.self_attn.{j}"))?;
        let QueryPath::LowRank { a, .. } = &attn.q else {
            unreachable!("longcat_flash refuses q_lora_rank null")
        };
        attn.q_scale = (h as f64 / a.d_out() as f64).sqrt();
        attn.kv_scale = (h as f64 / attn.kv_lora_rank as f64).sqrt();
        let norm = |name: &str| RmsNorm::load(w, &format!("{p}.{name}.{j}.weight"), h, eps);
        Ok(Block {
            input_layernorm: norm("input_layernorm")?,
            attn: Attention::Latent(attn),
            post_attention_layernorm: norm("post_attention_layernorm")?,
            ffn: FeedForward::Dense(Mlp::load(w, &format!("{p}.mlps.{j}"), h, inter)?),
        })
    };
    let blocks = [block(0)?, block(1)?];
    let n = cfg.need(cfg.num_experts(), "n_routed_experts")?;
    // an absent field is the config class default (256); an explicit null means none
    let zero = if cfg.has("zero_expert_num") {
        cfg.zero_expert_num.unwrap_or(0)
    } else {
        256
    };
    let moe_inter = cfg.moe_intermediate_size.unwrap_or(2048);
    let m = format!("{p}.mlp");
    let mut experts = (0..n)
        .map(|e| Expert::load(w, &format!("{m}.experts.{e}"), h, moe_inter))
        .collect::<Result<Vec<_>, _>>()?;
    experts.extend((0..zero).map(|_| Expert::Identity));
    let moe = MoeBlock {
        gate: Linear::load(w, &format!("{m}.router.classifier"), h, n + zero, false)?,
        experts,
        shared_experts: None,
        shared_expert_gate: None,
        top_k: cfg.num_experts_per_tok.unwrap_or(12),
        router: Router::SoftmaxBiased {
            bias: w.read(&format!("{m}.router.e_score_correction_bias"), &[n + zero])?,
            scale: cfg.routed_scaling_factor.unwrap_or(6.0) as f32,
        },
    };
    Ok(Layer::Shortcut { blocks, moe })
}
