//! HF `config.json` of every supported teacher, deserialized with HF field names.
//!
//! Hub checkpoints and transformers 5 spell some fields differently (`rope_theta` vs
//! `rope_parameters.rope_theta`, `torch_dtype` vs `dtype`, `num_experts` vs
//! `num_local_experts`); files may even carry both, so each spelling is its own field
//! and the accessors below merge them.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::TeacherError;

/// Architectures Ember can run as teachers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Mixtral,
    DeepseekV3,
}

impl Arch {
    pub const SUPPORTED: [&'static str; 6] = [
        "llama",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "mixtral",
        "deepseek_v3",
    ];

    fn from_model_type(t: &str) -> Option<Self> {
        Some(match t {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "qwen3_moe" => Arch::Qwen3Moe,
            "mixtral" => Arch::Mixtral,
            "deepseek_v3" => Arch::DeepseekV3,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<usize>,

    // Mixture of experts (Qwen3-MoE, Mixtral, DeepSeek-V3)
    #[serde(default)]
    pub num_experts: Option<usize>,
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub decoder_sparse_step: Option<usize>,
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<usize>>,
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,

    // DeepSeek-V3
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    #[serde(default)]
    pub first_k_dense_replace: Option<usize>,
    #[serde(default)]
    pub routed_scaling_factor: Option<f64>,
    #[serde(default)]
    pub scoring_func: Option<String>,
    #[serde(default)]
    pub topk_method: Option<String>,
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    #[serde(default)]
    pub kv_lora_rank: Option<usize>,
    #[serde(default)]
    pub qk_rope_head_dim: Option<usize>,
    #[serde(default)]
    pub qk_nope_head_dim: Option<usize>,
    #[serde(default)]
    pub v_head_dim: Option<usize>,
    #[serde(default)]
    pub rope_interleave: Option<bool>,

    /// Which architecture (from `model_type`).
    #[serde(skip, default = "default_arch")]
    pub arch: Arch,
    /// SHA-256 of the config.json bytes.
    #[serde(skip)]
    pub sha256: String,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_arch() -> Arch {
    Arch::Llama
}

impl HfConfig {
    /// Read and check `path`.
    pub fn load(path: &Path) -> Result<Self, TeacherError> {
        let bytes = std::fs::read(path).map_err(|source| TeacherError::Io {
            path: path.into(),
            source,
        })?;
        let mut cfg: HfConfig =
            serde_json::from_slice(&bytes).map_err(|source| TeacherError::ConfigJson {
                path: path.into(),
                source,
            })?;
        let err = |message: String| TeacherError::Config {
            path: path.into(),
            message,
        };
        cfg.arch = Arch::from_model_type(&cfg.model_type).ok_or_else(|| {
            err(format!(
                "model_type {:?} is not supported; supported: {:?}",
                cfg.model_type,
                Arch::SUPPORTED
            ))
        })?;
        cfg.sha256 = format!("{:x}", Sha256::digest(&bytes));
        if cfg.num_attention_heads == 0 || cfg.num_attention_heads % cfg.num_key_value_heads() != 0
        {
            return Err(err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.num_attention_heads,
                cfg.num_key_value_heads()
            )));
        }
        if let Some(act) = &cfg.hidden_act
            && act != "silu"
        {
            return Err(err(format!(
                "hidden_act {act:?} unsupported (only silu/SwiGLU)"
            )));
        }
        if let Some(scaling) = cfg.rope_scaling_params()
            && !matches!(
                scaling.get("rope_type").and_then(|t| t.as_str()),
                None | Some("default")
            )
        {
            return Err(err(format!("rope scaling {scaling} is not supported yet")));
        }
        Ok(cfg)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// `rope_theta`, or `rope_parameters.rope_theta` (transformers 5), default 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10000.0)
    }

    /// RoPE scaling settings from either spelling, if any (`null` counts as none).
    fn rope_scaling_params(&self) -> Option<&serde_json::Value> {
        self.rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(self.rope_parameters.as_ref())
    }

    /// `torch_dtype` or `dtype`.
    pub fn weights_dtype(&self) -> Option<&str> {
        self.torch_dtype.as_deref().or(self.dtype.as_deref())
    }

    /// Routed experts: `num_experts`, `num_local_experts` or `n_routed_experts`.
    pub fn num_experts(&self) -> Option<usize> {
        self.num_experts
            .or(self.num_local_experts)
            .or(self.n_routed_experts)
    }

    /// Required field, with a clear error naming it.
    pub fn need<T: Copy>(&self, value: Option<T>, name: &str) -> Result<T, TeacherError> {
        value.ok_or_else(|| {
            TeacherError::Invalid(format!("{} config lacks {name}", self.model_type))
        })
    }
}
