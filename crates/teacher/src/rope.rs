//! Rotary position embeddings as configured: the base frequencies, the scaled variants
//! transformers defines (`linear`, `dynamic`, `yarn`, `llama3`), partial rotation, and the
//! cos/sin factor YaRN applies. Settings come from `rope_scaling` (hub spelling, `type` or
//! `rope_type`) or `rope_parameters` (transformers 5), merged as transformers'
//! `standardize_rope_params` merges them; anything Ember does not implement is refused.
//! Reference: transformers `modeling_rope_utils.py`.

use burn::prelude::*;
use serde_json::{Map, Value};

/// One RoPE variant with its parameters, as read from the config.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor` (all frequencies divided by it).
    Linear {
        factor: f64,
    },
    /// NTK-aware: beyond `max_position_embeddings` the base grows with the sequence length.
    Dynamic {
        factor: f64,
        max_position_embeddings: usize,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// cos/sin multiplier (`attention_factor`, or derived from `mscale`/`mscale_all_dim`).
        attention_factor: f64,
        truncate: bool,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// RoPE of one model: rotary width, base, variant.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Rotated dims per head (`head_dim * partial_rotary_factor`), even.
    pub dim: usize,
    pub theta: f64,
    pub scaling: RopeScaling,
    /// `rope_type` as configured, and the raw settings (for the MLA softmax correction).
    pub rope_type: String,
    pub mscale_all_dim: Option<f64>,
    pub factor: Option<f64>,
}

/// The rope settings of a config: `rope_scaling` if set, else `rope_parameters`, with the
/// top-level `rope_theta` and `partial_rotary_factor` filled in where the dict lacks them.
pub fn rope_settings(
    rope_scaling: Option<&Value>,
    rope_parameters: Option<&Value>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
) -> Result<Map<String, Value>, String> {
    let raw = rope_scaling
        .filter(|v| !v.is_null())
        .or(rope_parameters.filter(|v| !v.is_null()));
    let mut map = match raw {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(format!(
                "rope_scaling/rope_parameters {other} is not an object"
            ));
        }
    };
    if !map.contains_key("rope_type") {
        let t = map.get("type").cloned().unwrap_or_else(|| "default".into());
        map.insert("rope_type".into(), t);
    }
    if !map.contains_key("rope_theta") {
        map.insert("rope_theta".into(), rope_theta.unwrap_or(10000.0).into());
    }
    if let Some(p) = partial_rotary_factor
        && !map.contains_key("partial_rotary_factor")
    {
        map.insert("partial_rotary_factor".into(), p.into());
    }
    Ok(map)
}

fn num(map: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("rope setting {key} = {v} is not a number")),
    }
}

fn need(map: &Map<String, Value>, key: &str, rope_type: &str) -> Result<f64, String> {
    num(map, key)?.ok_or_else(|| format!("rope_type {rope_type:?} needs rope setting {key}"))
}

/// `value` of rope setting `key`, which must be a positive finite number (a zero or negative
/// base, factor or length makes the frequencies infinite or NaN).
fn positive(key: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!(
            "rope setting {key} = {value} must be a positive number"
        ))
    }
}

/// transformers' `get_mscale`: 1 for `scale <= 1`, else `0.1 * mscale * ln(scale) + 1`.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl Rope {
    /// RoPE from merged settings (see [`rope_settings`]) for heads of `head_dim`;
    /// `max_position_embeddings` is the config's.
    pub fn from_settings(
        map: &Map<String, Value>,
        head_dim: usize,
        max_position_embeddings: Option<usize>,
    ) -> Result<Self, String> {
        const KNOWN: [&str; 14] = [
            "rope_type",
            "type",
            "rope_theta",
            "partial_rotary_factor",
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
            "low_freq_factor",
            "high_freq_factor",
        ];
        let rope_type = map
            .get("rope_type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("rope_type {} is not a string", map["rope_type"]))?
            .to_string();
        let theta = positive("rope_theta", need(map, "rope_theta", &rope_type)?)?;
        let partial = num(map, "partial_rotary_factor")?.unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(format!("partial_rotary_factor {partial} is outside (0, 1]"));
        }
        let dim = (head_dim as f64 * partial) as usize;
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(format!(
                "rotary dimension {dim} (head_dim {head_dim} x partial_rotary_factor {partial}) is not a positive even number"
            ));
        }
        let original = |map: &Map<String, Value>| -> Result<usize, String> {
            match num(map, "original_max_position_embeddings")? {
                Some(v) => Ok(positive("original_max_position_embeddings", v)? as usize),
                // transformers fills it in from max_position_embeddings
                None => max_position_embeddings.ok_or_else(|| {
                    format!("rope_type {rope_type:?} needs original_max_position_embeddings")
                }),
            }
        };
        let factor = || positive("factor", need(map, "factor", &rope_type)?);
        let scaling = match rope_type.as_str() {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => {
                if dim <= 2 {
                    return Err(format!(
                        "rope_type \"dynamic\" needs a rotary dimension above 2, got {dim}"
                    ));
                }
                RopeScaling::Dynamic {
                    factor: factor()?,
                    max_position_embeddings: max_position_embeddings.ok_or_else(|| {
                        "rope_type \"dynamic\" needs max_position_embeddings".to_string()
                    })?,
                }
            }
            "yarn" => {
                let factor = factor()?;
                let mscale = num(map, "mscale")?;
                let mscale_all_dim = num(map, "mscale_all_dim")?;
                let attention_factor = match num(map, "attention_factor")? {
                    Some(a) => a,
                    None => match (mscale, mscale_all_dim) {
                        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                            yarn_mscale(factor, m) / yarn_mscale(factor, a)
                        }
                        _ => yarn_mscale(factor, 1.0),
                    },
                };
                // `x or default` in transformers: 0 and null both fall back
                let or = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
                RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original(map)?,
                    beta_fast: positive("beta_fast", or(num(map, "beta_fast")?, 32.0))?,
                    beta_slow: positive("beta_slow", or(num(map, "beta_slow")?, 1.0))?,
                    attention_factor,
                    truncate: match map.get("truncate") {
                        None | Some(Value::Null) => true,
                        Some(Value::Bool(b)) => *b,
                        Some(v) => {
                            return Err(format!("rope setting truncate = {v} is not a bool"));
                        }
                    },
                }
            }
            "llama3" => {
                let low = positive("low_freq_factor", need(map, "low_freq_factor", &rope_type)?)?;
                let high = positive(
                    "high_freq_factor",
                    need(map, "high_freq_factor", &rope_type)?,
                )?;
                if high == low {
                    return Err(format!(
                        "llama3 rope: high_freq_factor {high} equals low_freq_factor {low} (the smoothing divides by their difference)"
                    ));
                }
                RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original(map)?,
                }
            }
            other => {
                return Err(format!(
                    "rope_type {other:?} is not supported (supported: default, linear, dynamic, yarn, llama3)"
                ));
            }
        };
        // checked once the type is known to be supported, so an unsupported type is named as such
        if let Some(k) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "rope setting {k} = {} is not implemented by Ember",
                map[k]
            ));
        }
        Ok(Self {
            dim,
            theta,
            scaling,
            rope_type,
            mscale_all_dim: num(map, "mscale_all_dim")?,
            factor: num(map, "factor")?,
        })
    }

    /// Inverse frequencies for a forward pass over `t` positions (only `dynamic` depends on `t`).
    pub fn inv_freq(&self, t: usize) -> Vec<f32> {
        let dim = self.dim;
        match self.scaling {
            RopeScaling::Default => ember_nn::inv_freq(dim, self.theta),
            RopeScaling::Linear { factor } => ember_nn::inv_freq(dim, self.theta)
                .into_iter()
                .map(|f| f / factor as f32)
                .collect(),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings: max,
            } => {
                // transformers recomputes the base once the sequence outgrows max_position_embeddings
                let seq = t.max(max) as f64;
                let base = self.theta
                    * ((factor * seq / max as f64) - (factor - 1.0))
                        .powf(dim as f64 / (dim as f64 - 2.0));
                ember_nn::inv_freq(dim, base)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let base = self.theta;
                let correction_dim = |rot: f64| {
                    (dim as f64 * (orig as f64 / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim as f64 - 1.0);
                if low == high {
                    high += 0.001; // as transformers: avoid the singularity
                }
                (0..dim / 2)
                    .map(|i| {
                        let pos_freq = (base as f32).powf((2 * i) as f32 / dim as f32);
                        let (extra, inter) = (1.0 / pos_freq, 1.0 / (factor as f32 * pos_freq));
                        let ramp =
                            ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        inter * (1.0 - extra_factor) + extra * extra_factor
                    })
                    .collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let (factor, lo, hi, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    old as f32,
                );
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                ember_nn::inv_freq(dim, self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        // transformers: ~(wavelen < high) * ~(wavelen > low); wavelengths are finite
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }

    /// Factor on cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f64 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        }
    }

    /// DeepSeek's softmax-scale correction (`yarn_apply_mscale`): with a non-default rope
    /// type and a non-zero `mscale_all_dim`, the attention scale is multiplied by
    /// `mscale(factor, mscale_all_dim)^2`.
    pub fn mla_softmax_correction(&self) -> f64 {
        match (self.rope_type.as_str(), self.mscale_all_dim, self.factor) {
            ("default", _, _) => 1.0,
            (_, Some(m), Some(f)) if m != 0.0 => yarn_mscale(f, m).powi(2),
            _ => 1.0,
        }
    }

    /// cos/sin tables `[t, dim]` for positions `0..t`, HF layout (frequencies repeated over
    /// both halves), times the attention factor.
    pub fn tables(&self, t: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        self.tables_at(0, t, device)
    }

    /// The rows `start..start + t` of [`Rope::tables`]`(start + t)`, computed alone (one
    /// decoding step costs one row, not the whole prefix).
    pub fn tables_at(&self, start: usize, t: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let inv_freq = self.inv_freq(start + t);
        ember_nn::tables_from_inv_freq(&inv_freq, start, t, self.attention_factor() as f32, device)
    }
}
