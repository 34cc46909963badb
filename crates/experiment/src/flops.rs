//! Compute accounting, spelled out so a reader can check it.
//!
//! Forward FLOPs per token of a decoder at context `T`:
//!   `2 * N_matmul + 2 * L * T * d_attn`
//! where `N_matmul` is every weight that takes part in a matrix product (all parameters minus
//! the input embedding table, which is a lookup; a tied table is counted once, as the LM head),
//! `L` the layers and `d_attn = heads * head_dim`. The second term is `QK^T` and `AV`
//! (2 FLOPs per multiply-add, `2 * d_attn` each per attended key) with causal attention
//! seeing `T / 2` keys on average. Training (forward + backward) is 3x the forward.
//! Norms, activations, softmax and the optimizer are left out (under 1% at these shapes).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ExperimentError;

/// What the FLOPs formula needs to know about a model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelShape {
    /// All parameters (every stored weight).
    pub params: u64,
    /// Parameters in matrix products (params minus the input embedding lookup).
    pub matmul_params: u64,
    pub layers: u64,
    /// `num_attention_heads * head_dim`.
    pub attn_dim: u64,
    /// Context length of the sequences it runs on.
    pub context: u64,
    /// True when the parameter count includes every expert of a mixture-of-experts model,
    /// so the FLOPs are an upper bound (only the routed experts run per token).
    pub counts_all_experts: bool,
}

impl ModelShape {
    pub fn forward_flops_per_token(&self) -> f64 {
        2.0 * self.matmul_params as f64 + 2.0 * (self.layers * self.context * self.attn_dim) as f64
    }

    pub fn train_flops_per_token(&self) -> f64 {
        3.0 * self.forward_flops_per_token()
    }
}

/// Shape of an Ember student.
pub fn student_shape(cfg: &ember_student::StudentConfig, seq_len: usize) -> ModelShape {
    let params = cfg.num_params() as u64;
    let embed = (cfg.vocab_size * cfg.hidden_size) as u64;
    ModelShape {
        params,
        // tied: the one table is the LM head's matrix; untied: drop the lookup table
        matmul_params: if cfg.tie_word_embeddings {
            params
        } else {
            params - embed
        },
        layers: cfg.num_hidden_layers as u64,
        attn_dim: (cfg.num_attention_heads * cfg.head_dim) as u64,
        context: seq_len as u64,
        counts_all_experts: false,
    }
}

/// Shape of any HF checkpoint directory: parameters counted from the safetensors headers
/// (every shard), layer and attention sizes from config.json.
pub fn model_shape(dir: &Path, seq_len: usize) -> Result<ModelShape, ExperimentError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| ExperimentError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExperimentError::Metrics {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
    let field = |k: &str| -> Result<u64, ExperimentError> {
        cfg[k].as_u64().ok_or_else(|| ExperimentError::Metrics {
            path: cfg_path.clone(),
            message: format!("missing integer field {k:?}"),
        })
    };
    let hidden = field("hidden_size")?;
    let heads = field("num_attention_heads")?;
    let head_dim = cfg["head_dim"].as_u64().unwrap_or(hidden / heads);
    let vocab = field("vocab_size")?;
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let params = count_safetensors_params(dir)?;
    let embed = vocab * hidden;
    let moe = ["num_experts", "num_local_experts", "n_routed_experts"]
        .iter()
        .any(|k| cfg[*k].as_u64().is_some_and(|n| n > 1));
    Ok(ModelShape {
        params,
        matmul_params: if tied {
            params
        } else {
            params.saturating_sub(embed)
        },
        layers: field("num_hidden_layers")?,
        attn_dim: heads * head_dim,
        context: seq_len as u64,
        counts_all_experts: moe,
    })
}

/// Elements of every tensor in `dir/*.safetensors`, from the headers alone.
pub fn count_safetensors_params(dir: &Path) -> Result<u64, ExperimentError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExperimentError::Io { path, source }
    };
    let mut total = 0u64;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        files += 1;
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(io(&path))?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(ExperimentError::Metrics {
                path,
                message: format!("safetensors header of {len} bytes"),
            });
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(io(&path))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| ExperimentError::Metrics {
                path: path.clone(),
                message: format!("safetensors header: {e}"),
            })?;
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let shape = info["shape"]
                .as_array()
                .ok_or_else(|| ExperimentError::Metrics {
                    path: path.clone(),
                    message: format!("tensor {name} has no shape"),
                })?;
            total += shape
                .iter()
                .map(|d| d.as_u64().unwrap_or(0))
                .product::<u64>();
        }
    }
    if files == 0 {
        return Err(ExperimentError::Metrics {
            path: dir.to_path_buf(),
            message: "no *.safetensors files".into(),
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_follow_the_formula() {
        // a toy shape worked by hand: 2 * 1000 + 2 * 2 * 8 * 4 = 2128
        let s = ModelShape {
            params: 1500,
            matmul_params: 1000,
            layers: 2,
            attn_dim: 4,
            context: 8,
            counts_all_experts: false,
        };
        assert_eq!(s.forward_flops_per_token(), 2128.0);
        assert_eq!(s.train_flops_per_token(), 6384.0);
    }

    #[test]
    fn student_shape_drops_only_an_untied_lookup_table() {
        let cfg = ember_student::StudentConfig::new(100, 16, 32, 2, 4, 2, 4);
        let untied = student_shape(&cfg.clone().with_tie_word_embeddings(false), 64);
        assert_eq!(untied.params - untied.matmul_params, 1600);
        let tied = student_shape(&cfg.with_tie_word_embeddings(true), 64);
        assert_eq!(tied.params, tied.matmul_params);
        assert_eq!(tied.attn_dim, 16);
    }
}
