//! The training recipe: one TOML file, every hyperparameter in it, each overridable
//! from the command line with `--set section.key=value`. Unknown keys are errors.

use std::path::{Path, PathBuf};

use ember_student::StudentConfig;
use serde::{Deserialize, Serialize};

use crate::TrainError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub train: TrainSection,
    /// Set to distil: where teacher distributions come from.
    #[serde(default)]
    pub teacher: Option<TeacherSection>,
    /// Distillation loss (used when `[teacher]` is set).
    #[serde(default)]
    pub distill: Option<crate::KdConfig>,
    /// On-policy distillation: the student samples completions of prompts, the teacher
    /// (`teacher.model` or `teacher.url`) scores them, the loss covers the generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onpolicy: Option<OnPolicySection>,
}

/// Settings of on-policy distillation (`[onpolicy]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnPolicySection {
    /// Loss on the student's samples.
    pub objective: Objective,
    /// Share of micro-batches that are on-policy (GKD's lambda); the others are offline
    /// batches with the `[distill]` loss: recorded logits (`teacher.logits`) or dataset rows
    /// scored by the in-process teacher.
    pub lambda: f64,
    /// Tokens sampled per prompt at most; sampling stops earlier at the EOS token.
    pub max_new_tokens: usize,
    /// Sampling temperature, top-p and top-k (0 = all) of the student.
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    /// Prompt length for datasets without labels (corpus rows): their first this many
    /// tokens. Instruction datasets (`data prepare-chat`) are cut before their answer.
    pub prompt_tokens: usize,
    /// Optimizer steps the sampling policy may lag the trained one: the batch of step `s`
    /// is sampled with the weights after step `s - max_staleness`, so sampling and scoring
    /// of later batches overlap the training step. 0 = exactly on-policy (sequential).
    pub max_staleness: usize,
    /// Scored micro-batches that may wait for the trainer (and sampled ones for the teacher).
    pub queue: usize,
    /// Concurrent requests to a remote teacher (one row each).
    pub remote_concurrency: usize,
}

/// The loss of on-policy micro-batches.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Per-token reverse-KL estimator in a policy-gradient loss, with the importance ratio
    /// to the sampling policy: needs only the teacher's log-probability of each sampled token.
    #[default]
    SampledKl,
    /// The `[distill]` loss (forward/reverse KL, JSD(beta), ...) over the teacher's top-k
    /// plus tail at every generated position, at `[distill]`'s temperature.
    Distribution,
}

impl Default for OnPolicySection {
    fn default() -> Self {
        Self {
            objective: Objective::SampledKl,
            lambda: 1.0,
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            prompt_tokens: 32,
            max_staleness: 1,
            queue: 2,
            remote_concurrency: 4,
        }
    }
}

/// Wire protocol of a served teacher.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RemoteProtocol {
    Vllm,
    Sglang,
}

/// The teacher of a distillation run: recorded logits (offline) or a model (online).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// Directory written by `ember record` (or `ember import`) for the train split.
    pub logits: Option<PathBuf>,
    /// Recorded logits of the validation split, for KL/agreement during evaluation.
    pub validation_logits: Option<PathBuf>,
    /// HF model directory run in-process (online distillation).
    pub model: Option<PathBuf>,
    /// A served teacher (on-policy distillation): the engine's base URL, e.g.
    /// `http://127.0.0.1:8000`, with `protocol` and `served_model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<RemoteProtocol>,
    /// Model name the engine serves (vLLM's `model` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// Retries of a failed request to a served teacher (timeouts, 5xx, dropped
    /// connections, malformed JSON), with the wait doubling from `retry_backoff_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_s: Option<f64>,
    /// Deadline of one request to a served teacher, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Top-k kept per position: from the online teacher's distribution, or the first k of
    /// the recorded entries (at most the recorded k) when distilling offline.
    /// Default: 64 online, every recorded entry offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Prepared dataset directory (from `ember data prepare`).
    pub dataset: PathBuf,
    /// Train on the first N rows of the train split only (e.g. the rows a teacher was recorded on).
    #[serde(default)]
    pub max_train_rows: Option<usize>,
}

/// A preset plus optional overrides of its fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub preset: String,
    /// Defaults to the dataset's vocabulary size.
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub rope_theta: Option<f64>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "tiny".into(),
            vocab_size: None,
            hidden_size: None,
            intermediate_size: None,
            num_hidden_layers: None,
            num_attention_heads: None,
            num_key_value_heads: None,
            head_dim: None,
            tie_word_embeddings: None,
            rope_theta: None,
        }
    }
}

impl ModelSection {
    /// The student shape for a dataset whose tokenizer has `dataset_vocab` ids.
    pub fn resolve(&self, dataset_vocab: usize) -> Result<StudentConfig, String> {
        let vocab = self.vocab_size.unwrap_or(dataset_vocab);
        let mut c = StudentConfig::preset(&self.preset, vocab).ok_or_else(|| {
            format!(
                "unknown model preset {:?}; choose one of {:?}",
                self.preset,
                StudentConfig::PRESETS
            )
        })?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim
        );
        set!(tie_word_embeddings, rope_theta);
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Output directory: checkpoints, metrics, final model.
    pub out_dir: PathBuf,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps in the whole run.
    pub max_steps: usize,
    /// Peak learning rate (reached after warmup).
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Clip the global gradient norm to this value (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    /// Log training metrics every this many steps.
    pub log_every: usize,
    /// Evaluate on validation every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Validation batches per evaluation (0 = the whole split).
    pub eval_batches: usize,
    /// Save a resumable checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk.
    pub keep_checkpoints: usize,
    /// Float format of the exported HF model.
    pub save_dtype: ember_student::SaveDtype,
    /// Start from this HF student directory (fine-tuning) instead of a random init; its
    /// config.json sets the shape and `[model]` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Compute precision: `f32`, or `bf16` (weights, activations and optimizer state in
    /// bf16 where the backend supports it; losses are computed in f32).
    pub precision: Precision,
    /// Optimizer steps whose loss or gradient norm is NaN/infinite that may be skipped
    /// (weights left as they were) before the run stops; 0 = stop at the first one.
    pub max_nonfinite_steps: usize,
}

/// Float format of training compute.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// Make this the default float type of `device`. Must run before the device holds any
    /// tensor; a backend without bf16 (e.g. WGPU) is refused with the reason.
    pub fn apply(self, device: &burn::prelude::Device) -> Result<(), String> {
        use burn::tensor::FloatDType;
        let dtype = match self {
            Precision::F32 => return Ok(()),
            Precision::Bf16 => FloatDType::BF16,
        };
        if device.settings().float_dtype == dtype {
            return Ok(());
        }
        if !device.supports_dtype(dtype) {
            return Err(format!(
                "{device:?} has no {self:?} support; use train.precision = \"f32\" on this backend"
            ));
        }
        let mut device = device.clone();
        device
            .configure(dtype)
            .map_err(|e| format!("cannot train in {self:?} on {device:?}: {e:?}"))
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("checkpoints/run"),
            batch_size: 16,
            grad_accum: 1,
            max_steps: 1000,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 50,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            grad_clip: 1.0,
            seed: 42,
            log_every: 10,
            eval_every: 200,
            eval_batches: 0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            save_dtype: ember_student::SaveDtype::F32,
            precision: Precision::F32,
            max_nonfinite_steps: 0,
            init_from: None,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), String> {
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 || t.max_steps == 0 {
            return Err(
                "train.batch_size, train.grad_accum and train.max_steps must be positive".into(),
            );
        }
        if t.warmup_steps >= t.max_steps {
            return Err(format!(
                "train.warmup_steps {} must be below train.max_steps {}",
                t.warmup_steps, t.max_steps
            ));
        }
        if !(t.lr > 0.0 && t.min_lr >= 0.0 && t.min_lr <= t.lr) {
            return Err(format!(
                "need 0 <= train.min_lr ({}) <= train.lr ({}) and lr > 0",
                t.min_lr, t.lr
            ));
        }
        if t.checkpoint_every == 0 || t.log_every == 0 {
            return Err("train.checkpoint_every and train.log_every must be positive".into());
        }
        if let Some(o) = &self.onpolicy {
            if self.teacher.is_none() {
                return Err(
                    "[onpolicy] needs a [teacher] (model or url) to score the samples".into(),
                );
            }
            if !(0.0..=1.0).contains(&o.lambda) {
                return Err(format!("onpolicy.lambda {} must lie in [0, 1]", o.lambda));
            }
            if o.max_new_tokens == 0 || o.queue == 0 || o.remote_concurrency == 0 {
                return Err(
                    "onpolicy.max_new_tokens, onpolicy.queue and onpolicy.remote_concurrency must be positive"
                        .into(),
                );
            }
            if !(o.temperature > 0.0) {
                return Err(format!(
                    "onpolicy.temperature {} must be positive: greedy decoding has no sampling distribution for the importance ratio",
                    o.temperature
                ));
            }
            if o.prompt_tokens == 0 {
                return Err("onpolicy.prompt_tokens must be at least 1".into());
            }
            if !(o.top_p > 0.0 && o.top_p <= 1.0) {
                return Err(format!("onpolicy.top_p {} must lie in (0, 1]", o.top_p));
            }
        }
        Ok(())
    }
}

/// Read `path` (or only the overrides when `path` is `None`), apply `key.path=value`
/// overrides (values parsed as TOML, falling back to strings), and validate.
pub fn load_config(path: Option<&Path>, overrides: &[String]) -> Result<TrainConfig, TrainError> {
    let source = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("<command line>"));
    let mut table: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| TrainError::Io {
                path: p.to_path_buf(),
                source: e,
            })?;
            text.parse()
                .map_err(|e: toml::de::Error| TrainError::Config {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| TrainError::Override(o.clone()))?;
        let value: toml::Value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut parts: Vec<&str> = key.trim().split('.').collect();
        let last = parts
            .pop()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| TrainError::Override(o.clone()))?;
        let mut node = &mut table;
        for p in parts {
            node = node
                .entry(p)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| TrainError::Override(o.clone()))?;
        }
        node.insert(last.to_string(), value);
    }
    let cfg: TrainConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| TrainError::Config {
            path: source.clone(),
            message: e.to_string(),
        })?;
    cfg.check().map_err(|message| TrainError::Config {
        path: source,
        message,
    })?;
    Ok(cfg)
}
