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
use crate::rope::{Rope, rope_settings};

/// Architectures Ember can run as teachers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Mixtral,
    DeepseekV3,
    /// Moonshot Kimi K2: the DeepSeek-V3 architecture under its own `model_type`.
    KimiK2,
    Glm4Moe,
    MiniMaxM2,
    /// DeepSeek-V3.2: DeepSeek-V3 with the sparse-attention indexer.
    DeepseekV32,
    /// Meituan LongCat-Flash: paired MLA sublayers with a shortcut MoE and identity experts.
    LongcatFlash,
    /// Qwen3-Next: Gated DeltaNet and gated full attention, zero-centred norms.
    Qwen3Next,
}

impl Arch {
    pub const SUPPORTED: [&'static str; 12] = [
        "llama",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "mixtral",
        "deepseek_v3",
        "kimi_k2",
        "glm4_moe",
        "minimax_m2",
        "deepseek_v32",
        "longcat_flash",
        "qwen3_next",
    ];

    /// Multi-head latent attention (DeepSeek-V3, Kimi K2, DeepSeek-V3.2, LongCat-Flash).
    pub fn is_mla(self) -> bool {
        matches!(
            self,
            Arch::DeepseekV3 | Arch::KimiK2 | Arch::DeepseekV32 | Arch::LongcatFlash
        )
    }

    fn from_model_type(t: &str) -> Option<Self> {
        Some(match t {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "qwen3_moe" => Arch::Qwen3Moe,
            "mixtral" => Arch::Mixtral,
            "deepseek_v3" => Arch::DeepseekV3,
            "kimi_k2" => Arch::KimiK2,
            "glm4_moe" => Arch::Glm4Moe,
            "minimax_m2" => Arch::MiniMaxM2,
            "deepseek_v32" => Arch::DeepseekV32,
            "longcat_flash" => Arch::LongcatFlash,
            "qwen3_next" => Arch::Qwen3Next,
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
    /// LongCat spells it `ffn_hidden_size`.
    #[serde(default, alias = "ffn_hidden_size")]
    pub intermediate_size: Option<usize>,
    /// Decoder layers as Ember loops over them. LongCat-Flash: its `num_layers` (each layer
    /// holds two attention sublayers; transformers' `num_hidden_layers` is twice that).
    #[serde(default)]
    pub num_hidden_layers: usize,
    /// LongCat-Flash's layer count.
    #[serde(default)]
    pub num_layers: Option<usize>,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Default per architecture (transformers' config defaults): see [`HfConfig::rms_norm_eps`].
    #[serde(default, rename = "rms_norm_eps")]
    pub rms_norm_eps_raw: Option<f64>,
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
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// MiniMax-M2's spelling of partial RoPE (rotated dims per head).
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// GLM-4.5: per-head RMSNorm on queries and keys.
    #[serde(default)]
    pub use_qk_norm: Option<bool>,
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,

    // Mixture of experts (Qwen3-MoE, Mixtral, DeepSeek-V3)
    #[serde(default)]
    pub num_experts: Option<usize>,
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    /// LongCat spells it `moe_topk`.
    #[serde(default, alias = "moe_topk")]
    pub num_experts_per_tok: Option<usize>,
    /// LongCat spells it `expert_ffn_hidden_size`.
    #[serde(default, alias = "expert_ffn_hidden_size")]
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

    // DeepSeek-V3.2 sparse attention
    #[serde(default)]
    pub index_topk: Option<usize>,
    #[serde(default)]
    pub index_head_dim: Option<usize>,
    #[serde(default)]
    pub index_n_heads: Option<usize>,

    // LongCat-Flash
    /// Zero-computation (identity) experts beside the routed ones.
    #[serde(default)]
    pub zero_expert_num: Option<usize>,

    // Qwen3-Next linear attention
    #[serde(default)]
    pub linear_conv_kernel_dim: Option<usize>,
    #[serde(default)]
    pub linear_key_head_dim: Option<usize>,
    #[serde(default)]
    pub linear_value_head_dim: Option<usize>,
    #[serde(default)]
    pub linear_num_key_heads: Option<usize>,
    #[serde(default)]
    pub linear_num_value_heads: Option<usize>,
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    pub full_attention_interval: Option<usize>,

    /// The whole config.json, to tell an absent key from an explicit `null`.
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
    /// Which architecture (from `model_type`).
    #[serde(skip, default = "default_arch")]
    pub arch: Arch,
    /// SHA-256 of the config.json bytes.
    #[serde(skip)]
    pub sha256: String,
}

/// Why a known relative of a supported family is not, and what to do instead.
fn unsupported_hint(model_type: &str) -> &'static str {
    match model_type {
        "longcat_flash_ngram" => {
            " (LongCat-Flash-Lite's N-gram embedding: transformers has no implementation of it, only vLLM \
             (model_executor/models/longcat_flash_ngram.py) and mlx-lm do, so Ember has no reference to \
             check it against; serve it with vLLM and record with `ember record --remote vllm`)"
        }
        _ => "",
    }
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
        Self::from_slice(&bytes, path)
    }

    /// Parse and check config.json bytes (`path` names the file in errors).
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, TeacherError> {
        let mut cfg: HfConfig =
            serde_json::from_slice(bytes).map_err(|source| TeacherError::ConfigJson {
                path: path.into(),
                source,
            })?;
        let err = |message: String| TeacherError::Config {
            path: path.into(),
            message,
        };
        cfg.arch = Arch::from_model_type(&cfg.model_type).ok_or_else(|| {
            err(format!(
                "model_type {:?} is not supported{}; supported: {:?}",
                cfg.model_type,
                unsupported_hint(&cfg.model_type),
                Arch::SUPPORTED
            ))
        })?;
        cfg.raw = serde_json::from_slice(bytes).map_err(|source| TeacherError::ConfigJson {
            path: path.into(),
            source,
        })?;
        cfg.sha256 = format!("{:x}", Sha256::digest(bytes));
        cfg.resolve_layers().map_err(err)?;
        cfg.check_fields().map_err(err)?;
        Ok(cfg)
    }

    /// Every config field that changes the math of this architecture (as transformers'
    /// modeling code reads it) is either implemented or refused here, naming the field.
    fn check_fields(&self) -> Result<(), String> {
        let arch = self.arch;
        if self.num_attention_heads == 0 {
            return Err("num_attention_heads is 0".into());
        }
        // MLA expands keys/values to every head itself; num_key_value_heads is not used
        if !arch.is_mla()
            && !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads())
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads()
            ));
        }
        let eps = self.rms_norm_eps();
        if !(eps.is_finite() && eps > 0.0) {
            return Err(format!("rms_norm_eps {eps} must be a positive number"));
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(format!("hidden_act {act:?} unsupported (only silu/SwiGLU)"));
        }
        if self.mlp_bias == Some(true) {
            return Err("mlp_bias true is not supported (bias on the MLP projections)".into());
        }
        // partial rotation: only GLM-4.5, MiniMax-M2 and Qwen3-Next rotate part of each head in
        // transformers; the merged settings tell, whichever spelling carried the factor
        let rope = self.rope()?;
        if !matches!(arch, Arch::Glm4Moe | Arch::MiniMaxM2 | Arch::Qwen3Next) {
            if let Some(r) = self.rotary_dim {
                return Err(format!("rotary_dim {r} is only read for minimax_m2"));
            }
            if rope.dim != self.rope_head_dim() {
                return Err(format!(
                    "partial_rotary_factor {} (rotating {} of {} dims per head) is not used by transformers' {} model; refusing it rather than ignoring it",
                    rope.dim as f64 / self.rope_head_dim() as f64,
                    rope.dim,
                    self.rope_head_dim(),
                    self.model_type
                ));
            }
        }
        self.quantization()?;
        // router and layer-layout settings transformers does not read, whose other values
        // would mean another model
        let refuse_unless = |k: &str, allowed: &[&str]| -> Result<(), String> {
            match self.raw.get(k) {
                None | Some(serde_json::Value::Null) => Ok(()),
                Some(v) if v.as_str().is_some_and(|s| allowed.contains(&s)) => Ok(()),
                Some(v) => Err(format!(
                    "{k} {v} is not supported by {} (supported: {allowed:?})",
                    self.model_type
                )),
            }
        };
        let refuse_num_unless = |k: &str, allowed: f64| -> Result<(), String> {
            match self.raw.get(k) {
                None | Some(serde_json::Value::Null) => Ok(()),
                Some(v) if v.as_f64() == Some(allowed) => Ok(()),
                Some(v) => Err(format!(
                    "{k} {v} is not supported by {} (only {allowed})",
                    self.model_type
                )),
            }
        };
        match arch {
            Arch::DeepseekV3 | Arch::KimiK2 => {
                refuse_unless("scoring_func", &["sigmoid"])?;
                refuse_unless("topk_method", &["noaux_tc"])?;
                refuse_num_unless("moe_layer_freq", 1.0)?;
            }
            Arch::Glm4Moe => {
                refuse_unless("scoring_func", &["sigmoid"])?;
                refuse_unless("topk_method", &["noaux_tc"])?;
            }
            Arch::MiniMaxM2 => {
                refuse_unless("scoring_func", &["sigmoid"])?;
                refuse_unless("qk_norm_type", &["per_layer"])?;
                if self.raw.get("use_qk_norm").and_then(|v| v.as_bool()) == Some(false) {
                    return Err("use_qk_norm false is not supported by minimax_m2".into());
                }
                if self.raw.get("use_routing_bias").and_then(|v| v.as_bool()) == Some(false) {
                    return Err("use_routing_bias false is not supported by minimax_m2".into());
                }
                refuse_num_unless("shared_intermediate_size", 0.0)?;
                // MiniMax-Text-01's residual scalings and post-norm; M2 ships 1.0 / false
                for beta in [
                    "layernorm_full_attention_beta",
                    "layernorm_linear_attention_beta",
                    "layernorm_mlp_beta",
                ] {
                    refuse_num_unless(beta, 1.0)?;
                }
                if self.raw.get("postnorm").and_then(|v| v.as_bool()) == Some(true) {
                    return Err("postnorm true is not supported by minimax_m2".into());
                }
                if let Some(list) = self.raw.get("attn_type_list").and_then(|v| v.as_array())
                    && list.iter().any(|v| v.as_i64() != Some(1))
                {
                    return Err(format!(
                        "attn_type_list {} has linear-attention layers (0), which minimax_m2 does not have",
                        self.raw["attn_type_list"]
                    ));
                }
            }
            Arch::DeepseekV32 => {
                refuse_unless("scoring_func", &["sigmoid"])?;
                refuse_unless("topk_method", &["noaux_tc"])?;
                if self.rope_interleave == Some(false) {
                    return Err("rope_interleave false is not supported by deepseek_v32 (transformers always interleaves its MLA rotary dims)".into());
                }
                if self.has("q_lora_rank") && self.q_lora_rank.is_none() {
                    return Err("q_lora_rank null is not supported by deepseek_v32 (the indexer reads the query latent)".into());
                }
                let (d, r) = (
                    self.index_head_dim.unwrap_or(128),
                    self.qk_rope_head_dim.unwrap_or(64),
                );
                if d < r {
                    return Err(format!(
                        "index_head_dim {d} is smaller than qk_rope_head_dim {r}, which the indexer rotates"
                    ));
                }
                if self.index_topk == Some(0) || self.index_n_heads == Some(0) {
                    return Err("index_topk and index_n_heads must be positive".into());
                }
                self.check_layer_types(&["indexed_attention"])?;
                if let Some(types) = self.raw.get("mlp_layer_types").filter(|v| !v.is_null()) {
                    let ok = types.as_array().is_some_and(|a| {
                        a.len() == self.num_hidden_layers
                            && a.iter()
                                .all(|t| matches!(t.as_str(), Some("dense" | "sparse")))
                    });
                    if !ok {
                        return Err(format!(
                            "mlp_layer_types {types} must list \"dense\" or \"sparse\" for each of the {} layers",
                            self.num_hidden_layers
                        ));
                    }
                }
            }
            Arch::LongcatFlash => {
                refuse_unless("zero_expert_type", &["identity"])?;
                if self.rope_interleave == Some(false) {
                    return Err("rope_interleave false is not supported by longcat_flash (transformers always interleaves its MLA rotary dims)".into());
                }
                if self.raw.get("router_bias").and_then(|v| v.as_bool()) == Some(true) {
                    return Err("router_bias true is not supported by longcat_flash (transformers' router ignores the classifier bias)".into());
                }
                for k in ["mla_scale_q_lora", "mla_scale_kv_lora"] {
                    if self.raw.get(k).and_then(|v| v.as_bool()) == Some(false) {
                        return Err(format!(
                            "{k} false is not supported by longcat_flash (transformers always scales the MLA latents)"
                        ));
                    }
                }
                if self.has("q_lora_rank") && self.q_lora_rank.is_none() {
                    return Err("q_lora_rank null is not supported by longcat_flash (its queries always go through the low-rank path)".into());
                }
                let rope = self.qk_rope_head_dim.unwrap_or(64);
                if let Some(h) = self.head_dim.filter(|&h| h != rope) {
                    return Err(format!(
                        "head_dim {h} differs from qk_rope_head_dim {rope}: transformers' longcat_flash sizes its rotary tables by head_dim and rotates qk_rope_head_dim dims"
                    ));
                }
                let qk = self.qk_nope_head_dim.unwrap_or(128) + rope;
                if let Some(v) = self.raw.get("qk_head_dim").and_then(|v| v.as_u64())
                    && v as usize != qk
                {
                    return Err(format!(
                        "qk_head_dim {v} differs from qk_nope_head_dim + qk_rope_head_dim = {qk}"
                    ));
                }
            }
            Arch::Qwen3Next => {
                self.check_layer_types(&["linear_attention", "full_attention"])?;
                let (nk, nv) = (
                    self.linear_num_key_heads.unwrap_or(16),
                    self.linear_num_value_heads.unwrap_or(32),
                );
                if nk == 0 || nv % nk != 0 {
                    return Err(format!(
                        "linear_num_value_heads {nv} is not a multiple of linear_num_key_heads {nk}"
                    ));
                }
                if self.linear_conv_kernel_dim == Some(0) {
                    return Err("linear_conv_kernel_dim 0 must be positive".into());
                }
                if self.use_sliding_window == Some(true) {
                    return Err("use_sliding_window true is not read by transformers' qwen3_next model; refusing it rather than ignoring it".into());
                }
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                if let Some(types) = &self.layer_types {
                    if types.len() != self.num_hidden_layers {
                        return Err(format!(
                            "layer_types has {} entries for {} layers",
                            types.len(),
                            self.num_hidden_layers
                        ));
                    }
                    if let Some(t) = types
                        .iter()
                        .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
                    {
                        return Err(format!("layer_types entry {t:?} is not supported"));
                    }
                }
            }
            _ => {}
        }
        // GLM-4.5 reads it; Qwen3 and MiniMax-M2 always normalise; on the others it would be
        // silently ignored
        if self.use_qk_norm == Some(true)
            && !matches!(
                arch,
                Arch::Glm4Moe | Arch::MiniMaxM2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Qwen3Next
            )
        {
            return Err(format!(
                "use_qk_norm true is not read by transformers' {} model; refusing it rather than ignoring it",
                self.model_type
            ));
        }
        Ok(())
    }

    /// The layer count from `num_hidden_layers` (LongCat: `num_layers`, or half of
    /// `num_hidden_layers` as transformers' setter takes it); Qwen3-Next's `layer_types`
    /// from `full_attention_interval` (default 4) when absent, as transformers derives it.
    fn resolve_layers(&mut self) -> Result<(), String> {
        let hidden_layers = self
            .has("num_hidden_layers")
            .then_some(self.num_hidden_layers);
        if self.arch == Arch::LongcatFlash {
            self.num_hidden_layers = match (self.num_layers, hidden_layers) {
                (Some(n), Some(h)) if h != 2 * n => {
                    return Err(format!(
                        "num_layers {n} and num_hidden_layers {h} disagree (num_hidden_layers counts both attention sublayers of each layer: {})",
                        2 * n
                    ));
                }
                (Some(n), _) => n,
                (None, Some(h)) if h % 2 == 0 => h / 2,
                (None, Some(h)) => {
                    return Err(format!(
                        "num_hidden_layers {h} is odd; longcat_flash layers hold two attention sublayers"
                    ));
                }
                (None, None) => return Err("config lacks num_layers".into()),
            };
        } else if hidden_layers.is_none() {
            return Err("config lacks num_hidden_layers".into());
        }
        if self.arch == Arch::Qwen3Next && self.layer_types.is_none() {
            let every = self.full_attention_interval.unwrap_or(4);
            if every == 0 {
                return Err("full_attention_interval 0 must be positive".into());
            }
            self.layer_types = Some(
                (0..self.num_hidden_layers)
                    .map(|i| {
                        if (i + 1) % every == 0 {
                            "full_attention"
                        } else {
                            "linear_attention"
                        }
                        .to_string()
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    /// Whether `key` is present in config.json (even as `null`).
    pub fn has(&self, key: &str) -> bool {
        self.raw.contains_key(key)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(match self.arch {
            // transformers' Qwen3NextConfig default
            Arch::Qwen3Next => 256,
            _ => self.hidden_size / self.num_attention_heads,
        })
    }

    /// `layer_types`, if present, has one of `allowed` per layer.
    fn check_layer_types(&self, allowed: &[&str]) -> Result<(), String> {
        let Some(types) = &self.layer_types else {
            return Ok(());
        };
        if types.len() != self.num_hidden_layers {
            return Err(format!(
                "layer_types has {} entries for {} layers",
                types.len(),
                self.num_hidden_layers
            ));
        }
        match types.iter().find(|t| !allowed.contains(&t.as_str())) {
            Some(t) => Err(format!(
                "layer_types entry {t:?} is not supported by {} (supported: {allowed:?})",
                self.model_type
            )),
            None => Ok(()),
        }
    }

    /// `rms_norm_eps`, defaulting as transformers' config class of this architecture does.
    pub fn rms_norm_eps(&self) -> f64 {
        self.rms_norm_eps_raw.unwrap_or(match self.arch {
            Arch::Mixtral | Arch::Glm4Moe | Arch::LongcatFlash => 1e-5,
            _ => 1e-6,
        })
    }

    /// `rope_theta`, or `rope_parameters.rope_theta` (transformers 5), else the
    /// architecture's default.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(match self.arch {
                Arch::Mixtral => 1e6,
                Arch::MiniMaxM2 => 5e6,
                Arch::LongcatFlash => 1e7,
                _ => 10000.0,
            })
    }

    /// The RoPE of this model: settings from either spelling, rotary width from
    /// `partial_rotary_factor` / `rotary_dim` (GLM-4.5 defaults to half the head).
    pub fn rope(&self) -> Result<Rope, String> {
        let mut partial = self.partial_rotary_factor;
        if let (Some(r), Arch::MiniMaxM2) = (self.rotary_dim, self.arch) {
            partial = partial.or(Some(r as f64 / self.head_dim() as f64));
        }
        match self.arch {
            Arch::Glm4Moe => partial = partial.or(Some(0.5)),
            Arch::Qwen3Next => partial = partial.or(Some(0.25)),
            _ => {}
        }
        let map = rope_settings(
            self.rope_scaling.as_ref(),
            self.rope_parameters.as_ref(),
            Some(self.rope_theta()),
            partial,
        )?;
        Rope::from_settings(&map, self.rope_head_dim(), self.max_position_embeddings)
    }

    /// Dims per head that RoPE applies to before any partial factor (MLA: the decoupled slice).
    fn rope_head_dim(&self) -> usize {
        if self.arch.is_mla() {
            self.qk_rope_head_dim.unwrap_or(64)
        } else {
            self.head_dim()
        }
    }

    /// Block-quantized weights, from `quantization_config`; other methods are refused.
    pub fn quantization(&self) -> Result<Option<Fp8Blocks>, String> {
        let Some(q) = self.quantization_config.as_ref().filter(|q| !q.is_null()) else {
            return Ok(None);
        };
        let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
        if method != "fp8" {
            return Err(format!(
                "quantization_config.quant_method {method:?} is not supported (only \"fp8\" block-quantized weights; dequantize other formats first)"
            ));
        }
        if let Some(fmt) = q.get("fmt").and_then(|f| f.as_str())
            && fmt != "e4m3"
        {
            return Err(format!(
                "quantization_config.fmt {fmt:?} is not supported (only \"e4m3\")"
            ));
        }
        if let Some(a) = q.get("activation_scheme").and_then(|f| f.as_str())
            && a != "dynamic"
        {
            return Err(format!(
                "quantization_config.activation_scheme {a:?} is not supported (only \"dynamic\")"
            ));
        }
        let block = q
            .get("weight_block_size")
            .and_then(|b| b.as_array())
            .filter(|b| b.len() == 2)
            .and_then(|b| Some([b[0].as_u64()? as usize, b[1].as_u64()? as usize]))
            .filter(|b| b[0] > 0 && b[1] > 0)
            .ok_or_else(|| {
                format!(
                    "quantization_config.weight_block_size {} must be two positive integers",
                    q.get("weight_block_size")
                        .unwrap_or(&serde_json::Value::Null)
                )
            })?;
        Ok(Some(Fp8Blocks { block }))
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
        value.ok_or_else(|| TeacherError::ModelConfig {
            model_type: self.model_type.clone(),
            message: format!("config lacks {name}"),
        })
    }

    /// Sliding window of layer `i` as transformers applies it, if any.
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match self.arch {
            // Qwen2/Qwen3: only with use_sliding_window, on the layers layer_types (or
            // max_window_layers, default 28) mark as sliding
            Arch::Qwen2 | Arch::Qwen3 => {
                let w = self
                    .sliding_window
                    .filter(|_| self.use_sliding_window == Some(true))?;
                let sliding = match &self.layer_types {
                    Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                    None => i >= self.max_window_layers.unwrap_or(28),
                };
                sliding.then_some(w)
            }
            Arch::Qwen3Moe => self
                .sliding_window
                .filter(|_| self.use_sliding_window == Some(true)),
            Arch::Mixtral => self.sliding_window,
            _ => None,
        }
    }
}

/// FP8 (e4m3) weights with one float32 `weight_scale_inv` per `block` (`[rows, cols]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Blocks {
    pub block: [usize; 2],
}
