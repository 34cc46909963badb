//! Loading a teacher directory: config, tokenizer check, weights, one architecture file per model type.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;

use crate::layers::{Expert, Mlp};
use crate::layers::{Linear, RmsNorm};
use crate::model::{Attention, Block, Layer, MoeBlock, Router, StandardAttention, Teacher};
use crate::{
    Arch, HfConfig, TeacherError, Weights, deepseek_v3, deepseek_v32, glm4_moe, llama,
    longcat_flash, minimax_m2, mixtral, qwen2, qwen3, qwen3_moe, qwen3_next,
};

/// Load the teacher at `dir` (`config.json` + safetensors) onto `device`, computing in `dtype`
/// (`DType::F32`, or `DType::BF16` to halve memory). Every tensor the architecture needs must be
/// present with the right shape, and every tensor present must be used.
pub fn load_teacher(dir: &Path, device: &Device, dtype: DType) -> Result<Teacher, TeacherError> {
    load_teacher_with(dir, device, dtype, None)
}

/// [`load_teacher`], choosing where routed experts live: `Some(true)` leaves them in the
/// checkpoint file (read when routed), `Some(false)` loads them, `None` decides by size (or
/// by `EMBER_STREAM_EXPERTS`).
pub fn load_teacher_with(
    dir: &Path,
    device: &Device,
    dtype: DType,
    stream_experts: Option<bool>,
) -> Result<Teacher, TeacherError> {
    let config_path = dir.join("config.json");
    let config = HfConfig::load(&config_path)?;
    let config_err = |message: String| TeacherError::Config {
        path: config_path.clone(),
        message,
    };
    let rope = config.rope().map_err(config_err)?;
    let w = Weights::open(dir, device, dtype)?.with_fp8(config.quantization().map_err(config_err)?);
    let stream = match stream_experts {
        Some(s) => s && config.num_experts().unwrap_or(0) > 0,
        None => auto_stream_experts(&config, &w)?,
    };
    let w = w.with_streamed_experts(stream);
    if dtype == DType::F32 && *device == Device::flex() {
        match crate::blas_library() {
            Some(lib) => eprintln!("teacher: float32 matmuls through {lib}"),
            None => eprintln!(
                "teacher: float32 matmuls in Burn (no libopenblas.so.0; `apt-get install libopenblas0` makes CPU teachers about 3x faster)"
            ),
        }
    }
    let (v, h) = (config.vocab_size, config.hidden_size);
    let embed_tokens = w.get("model.embed_tokens.weight", [v, h])?;
    let layers = (0..config.num_hidden_layers)
        .map(|i| match config.arch {
            Arch::Llama => llama::layer(&config, &w, i),
            Arch::Qwen2 => qwen2::layer(&config, &w, i),
            Arch::Qwen3 => qwen3::layer(&config, &w, i),
            Arch::Qwen3Moe => qwen3_moe::layer(&config, &w, i),
            Arch::Mixtral => mixtral::layer(&config, &w, i),
            Arch::DeepseekV3 | Arch::KimiK2 => deepseek_v3::layer(&config, &w, i),
            Arch::Glm4Moe => glm4_moe::layer(&config, &w, i),
            Arch::MiniMaxM2 => minimax_m2::layer(&config, &w, i),
            Arch::DeepseekV32 => deepseek_v32::layer(&config, &w, i),
            Arch::LongcatFlash => longcat_flash::layer(&config, &w, i),
            Arch::Qwen3Next => qwen3_next::layer(&config, &w, i),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // torch.topk refuses a k above the candidates; choosing fewer would be silently wrong
    for (i, moe) in layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.moe_blocks().into_iter().map(move |m| (i, m)))
    {
        if moe.top_k == 0 || moe.top_k > moe.experts.len() {
            return Err(config_err(format!(
                "num_experts_per_tok {} must be between 1 and the {} experts of layer {i}",
                moe.top_k,
                moe.experts.len()
            )));
        }
    }
    let norm = if config.arch == Arch::Qwen3Next {
        RmsNorm::load_centred(&w, "model.norm.weight", h, config.rms_norm_eps())?
    } else {
        RmsNorm::load(&w, "model.norm.weight", h, config.rms_norm_eps())?
    };
    let lm_head = Linear::new(
        if config.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed_tokens.clone().transpose()
        } else {
            w.get("lm_head.weight", [v, h])?.transpose()
        },
        None,
    );
    // Derived buffers, and the multi-token-prediction weights, which next-token logits do
    // not use: layers past num_hidden_layers (DeepSeek-V3/V3.2, Kimi K2, GLM-4.5),
    // `model.mtp.*` (LongCat-Flash), `mtp.*` (Qwen3-Next).
    let is_mtp = |k: &str| match config.arch {
        Arch::LongcatFlash => k.starts_with("model.mtp."),
        Arch::Qwen3Next => k.starts_with("mtp."),
        a if a.is_mla() || a == Arch::Glm4Moe => k
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n >= config.num_hidden_layers),
        _ => false,
    };
    // transformers 5 saves LongCat-Flash's fused expert weights with gate/up rows for the
    // identity experts too (`experts.E` for E >= n_routed_experts), which it never reads
    let n_routed = config.num_experts().unwrap_or(0);
    let is_identity_expert = |k: &str| {
        config.arch == Arch::LongcatFlash
            && k.split_once(".mlp.experts.")
                .and_then(|(_, r)| r.split('.').next()?.parse::<usize>().ok())
                .is_some_and(|e| e >= n_routed)
    };
    let unused: Vec<String> = w
        .unused()
        .into_iter()
        .filter(|k| !k.ends_with("rotary_emb.inv_freq") && !is_mtp(k) && !is_identity_expert(k))
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
        rope,
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
    let norm = |name: &str| {
        RmsNorm::load(
            w,
            &format!("{p}.{name}.weight"),
            cfg.hidden_size,
            cfg.rms_norm_eps(),
        )
    };
    Ok(Layer::PreNorm(Block {
        input_layernorm: norm("input_layernorm")?,
        attn,
        post_attention_layernorm: norm("post_attention_layernorm")?,
        ffn,
    }))
}

/// Where a standard attention normalises queries and keys (RMSNorm before RoPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkNorm {
    None,
    /// `q_norm`/`k_norm` of `head_dim` weights, applied per head (Qwen3, GLM-4.5).
    PerHead,
    /// Over the whole projection, `heads * head_dim` weights (MiniMax-M2).
    OverHeads,
}

/// Standard GQA attention at `model.layers.{i}.self_attn`, with layer `i`'s sliding window.
pub(crate) fn standard_attention(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    qkv_bias: bool,
    o_bias: bool,
    qk_norm: QkNorm,
) -> Result<Attention, TeacherError> {
    let p = format!("model.layers.{i}.self_attn");
    let (h, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads(),
        cfg.head_dim(),
    );
    let norm = |name: &str, heads: usize| {
        let dim = if qk_norm == QkNorm::OverHeads {
            heads * hd
        } else {
            hd
        };
        RmsNorm::load(w, &format!("{p}.{name}.weight"), dim, cfg.rms_norm_eps())
    };
    let with_norm = qk_norm != QkNorm::None;
    Ok(Attention::Standard(StandardAttention {
        q_proj: Linear::load(w, &format!("{p}.q_proj"), h, nh * hd, qkv_bias)?,
        k_proj: Linear::load(w, &format!("{p}.k_proj"), h, nkv * hd, qkv_bias)?,
        v_proj: Linear::load(w, &format!("{p}.v_proj"), h, nkv * hd, qkv_bias)?,
        o_proj: Linear::load(w, &format!("{p}.o_proj"), nh * hd, h, o_bias)?,
        q_norm: if with_norm {
            Some(norm("q_norm", nh)?)
        } else {
            None
        },
        k_norm: if with_norm {
            Some(norm("k_norm", nkv)?)
        } else {
            None
        },
        qk_norm_over_heads: qk_norm == QkNorm::OverHeads,
        output_gate: false,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        sliding_window: cfg.layer_window(i),
    }))
}

/// Defaults of the DeepSeek-style router fields, per architecture (transformers' config classes).
pub(crate) struct MoeDefaults {
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f64,
    pub first_k_dense_replace: usize,
    pub n_shared_experts: usize,
}

/// DeepSeek-style MoE at `prefix` (`gate`, `gate.e_score_correction_bias`, `experts.E`,
/// `shared_experts`): sigmoid scores, correction bias for the choice, group-limited top-k,
/// weights renormalised if `norm_topk_prob` and scaled by `routed_scaling_factor`.
pub(crate) fn sigmoid_moe(
    cfg: &HfConfig,
    w: &Weights,
    prefix: &str,
    defaults: &MoeDefaults,
) -> Result<MoeBlock, TeacherError> {
    let h = cfg.hidden_size;
    let n = cfg.need(cfg.num_experts(), "n_routed_experts")?;
    let inter = cfg.need(cfg.moe_intermediate_size, "moe_intermediate_size")?;
    let n_group = cfg.n_group.unwrap_or(defaults.n_group);
    let topk_group = cfg.topk_group.unwrap_or(defaults.topk_group);
    let top_k = cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?;
    if n_group == 0 || n % n_group != 0 {
        return Err(TeacherError::ModelConfig {
            model_type: cfg.model_type.clone(),
            message: format!("n_routed_experts {n} is not divisible by n_group {n_group}"),
        });
    }
    if topk_group == 0 || topk_group > n_group || top_k > topk_group * (n / n_group) {
        return Err(TeacherError::ModelConfig {
            model_type: cfg.model_type.clone(),
            message: format!(
                "num_experts_per_tok {top_k} cannot be chosen from topk_group {topk_group} of n_group {n_group} groups of {} experts",
                n / n_group
            ),
        });
    }
    let shared = cfg.n_shared_experts.unwrap_or(defaults.n_shared_experts);
    Ok(MoeBlock {
        gate: Linear::load(w, &format!("{prefix}.gate"), h, n, false)?,
        experts: (0..n)
            .map(|e| Expert::load(w, &format!("{prefix}.experts.{e}"), h, inter))
            .collect::<Result<_, _>>()?,
        shared_experts: if shared > 0 {
            Some(Mlp::load(
                w,
                &format!("{prefix}.shared_experts"),
                h,
                inter * shared,
            )?)
        } else {
            None
        },
        shared_expert_gate: None,
        top_k,
        router: Router::SigmoidGrouped {
            bias: w.read(&format!("{prefix}.gate.e_score_correction_bias"), &[n])?,
            n_group,
            topk_group,
            norm_topk_prob: cfg.norm_topk_prob.unwrap_or(true),
            scale: cfg
                .routed_scaling_factor
                .unwrap_or(defaults.routed_scaling_factor) as f32,
        },
    })
}

/// Whether routed experts stay in the checkpoint file: `EMBER_STREAM_EXPERTS=1` or `0`
/// decides; otherwise they do when the model converted to its compute dtype would take more
/// than half of the machine's available memory (an MoE teacher larger than the machine).
fn auto_stream_experts(config: &HfConfig, w: &Weights) -> Result<bool, TeacherError> {
    let moe = config.num_experts().unwrap_or(0) > 0;
    match std::env::var("EMBER_STREAM_EXPERTS").ok().as_deref() {
        Some("1") => return Ok(moe),
        Some("0") => return Ok(false),
        None | Some("") => {}
        Some(other) => {
            return Err(TeacherError::Env {
                var: "EMBER_STREAM_EXPERTS",
                value: other.to_string(),
                hint: "use 1 (experts stay in the file) or 0 (loaded)",
            });
        }
    }
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    });
    // f32 compute doubles a bf16 checkpoint
    let in_memory = w.file_bytes() * 2;
    let stream = moe && available.is_some_and(|a| in_memory > a / 2);
    if stream {
        eprintln!(
            "teacher: {:.1} GB of weights in f32 vs {:.1} GB available: routed experts stay in the checkpoint file and are read when routed (EMBER_STREAM_EXPERTS=0 to load them)",
            in_memory as f64 / 1e9,
            available.unwrap_or(0) as f64 / 1e9
        );
    }
    Ok(stream)
}

/// Layer `i`'s feed-forward in the DeepSeek layout: a dense MLP for the first
/// `first_k_dense_replace` layers, the sigmoid-routed MoE after.
pub(crate) fn first_k_dense_ffn(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    defaults: &MoeDefaults,
) -> Result<crate::model::FeedForward, TeacherError> {
    let sparse = i
        >= cfg
            .first_k_dense_replace
            .unwrap_or(defaults.first_k_dense_replace);
    deepseek_ffn(cfg, w, i, defaults, sparse)
}

/// Layer `i`'s feed-forward at `model.layers.{i}.mlp`: the sigmoid-routed MoE if `sparse`,
/// else a dense MLP of `intermediate_size`.
pub(crate) fn deepseek_ffn(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    defaults: &MoeDefaults,
    sparse: bool,
) -> Result<crate::model::FeedForward, TeacherError> {
    use crate::model::FeedForward;
    let p = format!("model.layers.{i}.mlp");
    Ok(if sparse {
        FeedForward::Moe(sigmoid_moe(cfg, w, &p, defaults)?)
    } else {
        FeedForward::Dense(Mlp::load(
            w,
            &p,
            cfg.hidden_size,
            cfg.need(cfg.intermediate_size, "intermediate_size")?,
        )?)
    })
}

/// Mixtral's `model.layers.{i}.block_sparse_moe` (also MiniMax-M2's): router `gate`, experts
/// `experts.E.{w1, w3, w2}` of `intermediate_size`, routed by `router(n_experts)`.
pub(crate) fn block_sparse_moe(
    cfg: &HfConfig,
    w: &Weights,
    i: usize,
    router: impl FnOnce(&str, usize) -> Result<Router, TeacherError>,
) -> Result<MoeBlock, TeacherError> {
    let p = format!("model.layers.{i}.block_sparse_moe");
    let (h, inter) = (
        cfg.hidden_size,
        cfg.need(cfg.intermediate_size, "intermediate_size")?,
    );
    let n = cfg.need(cfg.num_experts(), "num_local_experts")?;
    Ok(MoeBlock {
        gate: Linear::load(w, &format!("{p}.gate"), h, n, false)?,
        experts: (0..n)
            .map(|e| {
                Expert::load_named(w, &format!("{p}.experts.{e}"), ["w1", "w3", "w2"], h, inter)
            })
            .collect::<Result<_, _>>()?,
        shared_experts: None,
        shared_expert_gate: None,
        top_k: cfg.need(cfg.num_experts_per_tok, "num_experts_per_tok")?,
        router: router(&p, n)?,
    })
}
