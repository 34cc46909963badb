//! Student configuration (a Burn `Config`) with presets, and the HF `config.json` mapping.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::StudentError;

/// Shape of a Llama-style student. `init(&device)` builds it.
#[derive(Config, Debug, PartialEq)]
pub struct StudentConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    #[config(default = 1e-5)]
    pub rms_norm_eps: f64,
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Std of the normal initialisation of every matrix.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    #[config(default = 0)]
    pub bos_token_id: u32,
    #[config(default = 0)]
    pub eos_token_id: u32,
}

impl StudentConfig {
    /// Preset names accepted by [`StudentConfig::preset`].
    pub const PRESETS: [&'static str; 4] = ["tiny", "small", "base", "mobile"];

    /// A named size. `tiny` trains in minutes on 2 CPU cores; `mobile` follows
    /// MobileLLM-350M's deep-and-thin shape (32 layers, d 960, GQA 15/5, tied embeddings).
    pub fn preset(name: &str, vocab_size: usize) -> Option<Self> {
        let c = |h, i, l, n, kv, hd| Self::new(vocab_size, h, i, l, n, kv, hd);
        Some(match name {
            // ~0.8M non-embedding params
            "tiny" => c(128, 384, 4, 4, 2, 32).with_max_position_embeddings(1024),
            // ~11M non-embedding params
            "small" => c(384, 1024, 6, 6, 2, 64),
            // ~85M non-embedding params
            "base" => c(768, 2048, 12, 12, 4, 64),
            // ~320M non-embedding params
            "mobile" => c(960, 2560, 32, 15, 5, 64).with_tie_word_embeddings(true),
            _ => return None,
        })
    }

    /// Check the internal consistency of the shape.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.num_attention_heads;
        let kv = self.num_key_value_heads;
        if n == 0 || kv == 0 || n % kv != 0 {
            return Err(format!(
                "num_attention_heads {n} must be a positive multiple of num_key_value_heads {kv}"
            ));
        }
        if self.head_dim % 2 != 0 || self.head_dim == 0 {
            return Err(format!(
                "head_dim {} must be even and positive (RoPE rotates halves)",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps {} must be a positive number",
                self.rms_norm_eps
            ));
        }
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.intermediate_size == 0
        {
            return Err(
                "vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// Number of parameters (embeddings included, tied ones counted once).
    pub fn num_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// The HF `config.json` of this student as a `LlamaForCausalLM`.
    pub fn to_hf(&self, torch_dtype: &str) -> HfLlamaConfig {
        HfLlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: Some(self.rope_theta),
            rope_parameters: None,
            rope_scaling: None,
            tie_word_embeddings: self.tie_word_embeddings,
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
            initializer_range: self.initializer_range,
            bos_token_id: Some(self.bos_token_id),
            eos_token_id: Some(self.eos_token_id),
            torch_dtype: Some(torch_dtype.into()),
        }
    }

    /// Read a Llama-architecture HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, StudentError> {
        let text = std::fs::read_to_string(path).map_err(|source| StudentError::Io {
            path: path.into(),
            source,
        })?;
        let hf: HfLlamaConfig =
            serde_json::from_str(&text).map_err(|source| StudentError::ConfigJson {
                path: path.into(),
                source,
            })?;
        hf.to_student().map_err(|message| StudentError::Config {
            path: path.into(),
            message,
        })
    }
}

/// The subset of HF's `LlamaConfig` that a dense Llama student uses, with HF field names.
/// Both the hub spelling (`rope_theta`, `torch_dtype`) and transformers 5's
/// (`rope_parameters`, `dtype`) are accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HfLlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_init() -> f64 {
    0.02
}

impl HfLlamaConfig {
    /// Convert to a [`StudentConfig`], refusing features the student does not implement.
    pub fn to_student(&self) -> Result<StudentConfig, String> {
        if self.model_type != "llama" {
            return Err(format!(
                "model_type {:?} is not a dense Llama; load it as a teacher instead",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?} unsupported (students use SwiGLU/silu)",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return Err("attention_bias/mlp_bias are not supported by the student".into());
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is not supported by the student".into());
        }
        let rope_theta = self
            .rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10000.0);
        let kv = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if self.num_attention_heads == 0 {
            return Err("num_attention_heads is 0".into());
        }
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads);
        let cfg = StudentConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            kv,
            head_dim,
        )
        .with_max_position_embeddings(self.max_position_embeddings)
        .with_rms_norm_eps(self.rms_norm_eps)
        .with_rope_theta(rope_theta)
        .with_tie_word_embeddings(self.tie_word_embeddings)
        .with_initializer_range(self.initializer_range)
        .with_bos_token_id(self.bos_token_id.unwrap_or(0))
        .with_eos_token_id(self.eos_token_id.unwrap_or(0));
        cfg.validate()?;
        Ok(cfg)
    }
}
