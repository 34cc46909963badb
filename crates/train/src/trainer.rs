//! A training run on burn-train, top to bottom.
//!
//! The student is a burn-train `Learner` model (`learner.rs`): each optimizer step is
//! `grad_accum` micro-batches of `batch_size` packed rows, each row's first `seq_len - 1`
//! tokens predicting the next; gradients summed by burn-train over the micro-batches
//! (each loss divided by `grad_accum`), clipped by their global L2 norm, then one AdamW
//! update at the warmup+cosine learning rate of that step. burn-train's epochs are spans
//! of optimizer steps (`feed.rs`), so its per-epoch validation and checkpoints land every
//! `eval_every` and `checkpoint_every` steps. Checkpoints (model, optimizer, scheduler)
//! go to `checkpoints/step-N/` through a temporary directory and a rename; the data
//! position follows from the step, so a killed run resumes exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::prelude::*;
use burn_train::{Learner, SupervisedTraining};
use ember_data::{Split, TokenDataset};
use ember_student::{StudentConfig, save_hf};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

pub use crate::distill::KdEval;
use crate::distill::build_source;
use crate::feed::{FeedConfig, TrainFeed, TrainLoader, ValidLoader, ValidSet};
use crate::learner::{Distiller, NonFiniteGuard, WarmupCosine};
use crate::monitor::{
    EveryNSteps, JsonlLogger, RunShape, StatMetric, StepBar, StepCheckpoints, TokensPerSecond,
};
use crate::{EvalReport, TrainConfig, TrainError};

/// What a finished run reports (also written to `<out_dir>/summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: u64,
    /// Wall time of this invocation's steps only.
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub final_train_loss: f64,
    pub validation: EvalReport,
    /// Forward KL to the teacher and top-1 agreement on validation (distillation runs).
    pub validation_kd: Option<KdEval>,
    pub unigram_validation_perplexity: f64,
    pub num_params: usize,
    pub model_dir: PathBuf,
    pub resumed_from_step: Option<usize>,
    /// On-policy distillation: samples, stage throughputs and staleness of this invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onpolicy: Option<serde_json::Value>,
}

/// Train (or resume) the run described by `cfg` on `device` (a plain device; autodiff
/// is enabled here).
pub fn train(cfg: &TrainConfig, device: &Device) -> Result<TrainSummary, TrainError> {
    let t = &cfg.train;
    let mut train_data = TokenDataset::open(&cfg.data.dataset, Split::Train)?;
    if let Some(n) = cfg.data.max_train_rows {
        train_data.truncate(n);
    }
    let valid_data = TokenDataset::open(&cfg.data.dataset, Split::Validation)?;
    let manifest = train_data.manifest.clone();
    let manifest = &manifest;
    let student_cfg = match &t.init_from {
        Some(dir) => StudentConfig::from_hf_file(&dir.join("config.json"))?,
        None => cfg
            .model
            .resolve(manifest.vocab_size)
            .map_err(|message| TrainError::Config {
                path: "[model]".into(),
                message,
            })?
            .with_max_position_embeddings(manifest.seq_len.max(1024)),
    }
    .with_eos_token_id(manifest.eos_token_id)
    .with_bos_token_id(manifest.eos_token_id);
    if student_cfg.vocab_size < manifest.vocab_size {
        return Err(TrainError::Vocab(format!(
            "dataset {} uses a tokenizer with {} ids but model.vocab_size is {}; remove the override or set it >= {}",
            cfg.data.dataset.display(),
            manifest.vocab_size,
            student_cfg.vocab_size,
            manifest.vocab_size
        )));
    }
    if valid_data.is_empty() {
        return Err(TrainError::Config {
            path: cfg.data.dataset.clone(),
            message: "the validation split is empty; prepare the dataset with --val-fraction > 0"
                .into(),
        });
    }
    if train_data.len() < t.batch_size {
        return Err(TrainError::Config {
            path: cfg.data.dataset.clone(),
            message: format!(
                "{} training rows, fewer than one batch of {}",
                train_data.len(),
                t.batch_size
            ),
        });
    }

    let out = &t.out_dir;
    let ckpt_root = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_root).map_err(|source| TrainError::Io {
        path: ckpt_root.clone(),
        source,
    })?;
    let seq_len = train_data.seq_len();
    let shape = RunShape {
        steps_per_epoch: steps_per_epoch(t.eval_every, t.checkpoint_every),
        max_steps: t.max_steps,
        grad_accum: t.grad_accum,
        tokens_per_step: (t.batch_size * t.grad_accum * (seq_len - 1)) as u64,
    };
    let checkpoints = StepCheckpoints::new(ckpt_root.clone(), shape.clone());
    let saved = checkpoints.steps().map_err(|source| TrainError::Io {
        path: ckpt_root.clone(),
        source,
    })?;
    let resumed_from_step = saved.last().copied();
    let cfg_path = out.join("student_config.json");
    if resumed_from_step.is_some() {
        // A checkpoint of another shape cannot be resumed: say so before touching anything.
        let saved = std::fs::read_to_string(&cfg_path).map_err(|source| TrainError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let saved: StudentConfig =
            serde_json::from_str(&saved).map_err(|e| TrainError::Checkpoint {
                path: cfg_path.clone(),
                message: e.to_string(),
            })?;
        if saved != student_cfg {
            return Err(TrainError::Checkpoint {
                path: cfg_path,
                message: format!(
                    "{} holds a run of another model shape ({saved:?}); use a new train.out_dir or delete the old run",
                    out.display()
                ),
            });
        }
    }
    let recipe_path = out.join("train_config.toml");
    if resumed_from_step.is_some() && recipe_path.is_file() {
        let saved = std::fs::read_to_string(&recipe_path).map_err(|source| TrainError::Io {
            path: recipe_path.clone(),
            source,
        })?;
        for change in recipe_changes(&saved, cfg).map_err(|message| TrainError::Checkpoint {
            path: recipe_path.clone(),
            message,
        })? {
            eprintln!("resuming with a changed recipe: {change}");
        }
    }
    write_file(
        &out.join("train_config.toml"),
        toml::to_string_pretty(cfg)
            .expect("config serializes")
            .as_bytes(),
    )?;
    write_file(&cfg_path, student_cfg.to_string().as_bytes())?;

    t.precision
        .apply(device)
        .map_err(|message| TrainError::Config {
            path: "train.precision".into(),
            message,
        })?;
    device.seed(t.seed);
    let ad = device.clone().autodiff();
    let student = match &t.init_from {
        // the checkpoint's weights; its token ids must mean the same as the dataset's
        Some(dir) => {
            crate::distill::check_model_tokenizer(dir, manifest, &cfg.data.dataset)?;
            ember_student::load_hf(dir, &ad)?.0
        }
        None => student_cfg.init(&ad),
    };

    if let Some(step) = resumed_from_step {
        let dir = checkpoints.dir(step);
        check_checkpoint(&dir, step)?;
        truncate_metrics(&out.join("metrics.jsonl"), step)?;
        eprintln!("resuming from {} (step {step})", dir.display());
    }
    let start_step = resumed_from_step.unwrap_or(0);

    let kd = cfg.distill.clone().unwrap_or_default();
    let prompts = match &cfg.onpolicy {
        Some(o) => Some(crate::onpolicy::prompts_of(&train_data, o.prompt_tokens)?),
        None => None,
    };
    let (source, valid_teacher, scorer) = build_source(cfg, train_data, device)?;
    if source.len() < t.batch_size {
        return Err(TrainError::Config {
            path: cfg.data.dataset.clone(),
            message: format!(
                "{} training rows, fewer than one batch of {}",
                source.len(),
                t.batch_size
            ),
        });
    }
    let distilling = cfg.teacher.is_some();
    let onpolicy_log = out.join("onpolicy.jsonl");
    let pipeline = match (&cfg.onpolicy, scorer, prompts) {
        (Some(o), Some(scorer), Some(prompts)) => {
            if o.lambda > 0.0 && prompts.len() < t.batch_size {
                return Err(TrainError::Config {
                    path: cfg.data.dataset.clone(),
                    message: format!(
                        "{} prompts, fewer than one batch of {}",
                        prompts.len(),
                        t.batch_size
                    ),
                });
            }
            // a fresh run drops the log of an earlier attempt in this directory
            truncate_metrics(&onpolicy_log, start_step)?;
            let plan = crate::onpolicy::Plan {
                seed: t.seed,
                batch_size: t.batch_size,
                grad_accum: t.grad_accum,
                lambda: o.lambda,
                first_step: start_step,
                max_steps: t.max_steps,
                max_staleness: o.max_staleness,
                queue: o.queue,
                generate: ember_student::GenerateConfig {
                    max_new_tokens: o.max_new_tokens,
                    temperature: o.temperature as f32,
                    top_k: o.top_k,
                    top_p: o.top_p as f32,
                    seed: t.seed,
                    stop_token: Some(manifest.eos_token_id),
                },
                k: onpolicy_k(cfg),
                vocab: manifest.vocab_size,
            };
            Some(crate::feed::OnPolicyFeed {
                pipeline: crate::onpolicy::Pipeline::start(
                    plan,
                    prompts,
                    scorer,
                    device.clone(),
                    onpolicy_log.clone(),
                    (t.batch_size * (seq_len - 1)) as u64,
                ),
                objective: o.objective,
                k: onpolicy_k(cfg),
            })
        }
        _ => None,
    };
    let policy = pipeline.as_ref().map(|p| p.pipeline.policy.clone());
    let onpolicy_stats = pipeline.as_ref().map(|p| p.pipeline.stats.clone());
    let feed = Arc::new(Mutex::new(TrainFeed::new(
        source,
        FeedConfig {
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            student_vocab: student_cfg.vocab_size,
            seed: t.seed,
            kd,
            max_steps: t.max_steps,
            steps_per_epoch: shape.steps_per_epoch,
            onpolicy_share: cfg.onpolicy.as_ref().map_or(0.0, |o| o.lambda),
        },
        start_step,
        pipeline,
    )));
    let valid = Arc::new(ValidSet {
        data: valid_data,
        teacher: valid_teacher,
        batch_size: t.batch_size,
        student_vocab: student_cfg.vocab_size,
    });
    let metrics_path = out.join("metrics.jsonl");
    if start_step == 0 && t.eval_every > 0 {
        // the starting point of the validation curves
        let (report, kd_report) = valid.evaluate(&student.valid(), t.eval_batches, device);
        log_eval(&metrics_path, 0, 0, &report, kd_report.as_ref())?;
    }

    let bar = ProgressBar::new(t.max_steps as u64)
        .with_position(start_step as u64)
        .with_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps {msg}",
            )
            .expect("template"),
        );
    bar.set_prefix("train");
    let logger = JsonlLogger::open(
        &metrics_path,
        shape.clone(),
        t.log_every,
        (t.warmup_steps, t.lr, t.min_lr),
        distilling,
        bar.clone(),
    )
    .map_err(|source| TrainError::Io {
        path: metrics_path.clone(),
        source,
    })?;
    let last_loss = logger.last_loss.clone();
    let mut logger = logger;
    logger.onpolicy = onpolicy_stats.clone();
    let mut training = SupervisedTraining::<Distiller>::new(
        out,
        Arc::new(TrainLoader {
            feed: feed.clone(),
            device: ad.clone(),
        }),
        Arc::new(ValidLoader {
            set: valid.clone(),
            feed,
            eval_every: t.eval_every,
            max_batches: t.eval_batches,
            device: device.clone(),
        }),
    )
    .with_metric_logger(logger)
    .renderer(Box::new(StepBar::new(bar.clone(), shape.clone())))
    .with_application_logger(None)
    .with_custom_checkpointers(
        checkpoints.part("model"),
        checkpoints.part("optim"),
        checkpoints.part("scheduler"),
    )
    .with_checkpointing_strategy(EveryNSteps {
        shape: shape.clone(),
        every: t.checkpoint_every,
        keep: t.keep_checkpoints,
        saved: saved.iter().map(|&s| shape.epoch_of_step(s)).collect(),
    })
    .num_epochs(shape.epoch_of_step(t.max_steps));
    for metric in StatMetric::training(distilling) {
        training = training.metric_train_numeric(metric);
    }
    training = training.metric_train_numeric(TokensPerSecond::default());
    for metric in StatMetric::validation(distilling) {
        training = training.metric_valid_numeric(metric);
    }
    if t.grad_accum > 1 {
        training = training.grads_accumulation(t.grad_accum);
    }
    if start_step > 0 {
        training = training.checkpoint(shape.epoch_of_step(start_step));
    }
    let guard = NonFiniteGuard {
        first_step: start_step,
        max_skips: t.max_nonfinite_steps,
        interrupter: training.interrupter(),
        ..NonFiniteGuard::default()
    };
    let mut distiller = Distiller::new(student, t.grad_clip, guard.clone());
    if let Some(policy) = &policy {
        // the sampler starts from the weights this process starts from: the checkpoint's
        // (burn-train loads them again at launch)
        if let Some(step) = resumed_from_step {
            let file = checkpoints.dir(step).join("model.bpk");
            let bytes = std::fs::read(&file).map_err(|source| TrainError::Io {
                path: file.clone(),
                source,
            })?;
            let record =
                burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                    .map_err(|e| TrainError::Checkpoint {
                    path: file,
                    message: e.to_string(),
                })?;
            distiller = distiller.load_record(record);
        }
        policy.publish(start_step, distiller.student.valid());
        distiller.clip.policy = Some(policy.clone());
    }
    let learner = Learner::new(
        distiller,
        adamw(cfg),
        WarmupCosine {
            warmup: t.warmup_steps,
            total: t.max_steps,
            peak: t.lr,
            min: t.min_lr,
            step: 0,
        },
    );

    let start = Instant::now();
    let result = training.launch(learner);
    bar.finish_and_clear();
    if let Some(policy) = &policy {
        policy.close();
    }
    if let Some(error) = result.error {
        return Err(TrainError::Training {
            path: out.clone(),
            message: error.to_string(),
        });
    }
    if let Some(message) = guard.stopped.lock().expect("stop reason").take() {
        return Err(TrainError::NonFinite {
            path: out.clone(),
            message,
        });
    }
    let seconds = start.elapsed().as_secs_f64();

    let valid_model = result.model.student;
    let (validation, validation_kd) = valid.evaluate(&valid_model, 0, device);
    validation.check_finite("final validation")?;
    log_eval(
        &metrics_path,
        t.max_steps,
        match &onpolicy_stats {
            Some(s) => s
                .lock()
                .expect("on-policy stats")
                .trained_positions(t.max_steps),
            None => t.max_steps as u64 * shape.tokens_per_step,
        },
        &validation,
        validation_kd.as_ref(),
    )?;
    let model_dir = out.join("model");
    save_hf(&valid_model, &student_cfg, &model_dir, t.save_dtype)?;
    let tokenizer = cfg.data.dataset.join(&manifest.tokenizer_file);
    std::fs::copy(&tokenizer, model_dir.join("tokenizer.json")).map_err(|source| {
        TrainError::Io {
            path: tokenizer,
            source,
        }
    })?;
    // on-policy runs: generated tokens of their on-policy batches, whole rows of the others
    let (tokens, trained_tokens) = match &onpolicy_stats {
        Some(stats) => {
            let s = stats.lock().expect("on-policy stats");
            let total = s.trained_positions(t.max_steps);
            let offline = ((t.max_steps - start_step) * t.grad_accum).saturating_sub(s.batches);
            (
                total,
                s.generated_tokens + offline as u64 * s.offline_positions,
            )
        }
        None => (
            t.max_steps as u64 * shape.tokens_per_step,
            (t.max_steps - start_step) as u64 * shape.tokens_per_step,
        ),
    };
    let final_train_loss = *last_loss.lock().expect("last loss");
    let summary = TrainSummary {
        steps: t.max_steps,
        tokens,
        seconds,
        tokens_per_second: trained_tokens as f64 / seconds.max(1e-9),
        final_train_loss,
        validation,
        validation_kd,
        unigram_validation_perplexity: manifest.unigram.validation_perplexity,
        num_params: student_cfg.num_params(),
        model_dir,
        resumed_from_step,
        onpolicy: onpolicy_stats.map(|s| s.lock().expect("on-policy stats").json()),
    };
    write_file(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("serializes")
            .as_bytes(),
    )?;
    Ok(summary)
}

/// Teacher entries per position scored for on-policy batches: `teacher.top_k`, else 20
/// (vLLM's default `--max-logprobs`).
fn onpolicy_k(cfg: &TrainConfig) -> usize {
    cfg.teacher.as_ref().and_then(|t| t.top_k).unwrap_or(20)
}

/// Optimizer steps per burn-train epoch: the largest number that divides both the
/// validation and the checkpoint interval (0 = never validate).
fn steps_per_epoch(eval_every: usize, checkpoint_every: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    gcd(eval_every, checkpoint_every).max(1)
}

/// Read every record of a checkpoint, so that a damaged one is an error naming its file
/// (burn-train's own loading would panic).
fn check_checkpoint(dir: &Path, step: usize) -> Result<(), TrainError> {
    let err = |file: &str, message: String| TrainError::Checkpoint {
        path: dir.join(file),
        message,
    };
    let state =
        std::fs::read(dir.join("state.json")).map_err(|e| err("state.json", e.to_string()))?;
    let state: crate::monitor::CheckpointState =
        serde_json::from_slice(&state).map_err(|e| err("state.json", format!("damaged: {e}")))?;
    if state.step != step {
        return Err(err(
            "state.json",
            format!("says step {}, but its directory is step {step}", state.step),
        ));
    }
    let bytes = |file: &str| {
        std::fs::read(dir.join(file))
            .map(burn::tensor::Bytes::from_bytes_vec)
            .map_err(|e| err(file, e.to_string()))
    };
    burn::store::ModuleRecord::from_bytes(bytes("model.bpk")?)
        .map_err(|e| err("model.bpk", e.to_string()))?;
    burn::optim::OptimizerRecord::from_bytes(bytes("optim.bpk")?)
        .map_err(|e| err("optim.bpk", e.to_string()))?;
    burn::lr_scheduler::LrSchedulerRecord::from_bytes(bytes("scheduler.bpk")?)
        .map_err(|e| err("scheduler.bpk", e.to_string()))?;
    Ok(())
}

/// Recipe keys that may change when a run resumes: they steer logging and bookkeeping,
/// not the optimisation a resumed run must continue exactly.
const RESUMABLE_KEYS: [&str; 5] = [
    "train.log_every",
    "train.keep_checkpoints",
    "train.eval_batches",
    "train.save_dtype",
    "train.max_nonfinite_steps",
];

/// The differences between the recipe a run was started with (`saved`, its
/// train_config.toml) and `cfg`: an error naming every key that may not change on resume,
/// else the allowed changes, one line each.
pub fn recipe_changes(saved: &str, cfg: &TrainConfig) -> Result<Vec<String>, String> {
    fn flatten(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let old: toml::Value = toml::from_str(saved)
        .map_err(|e| format!("damaged recipe of the run being resumed: {e}"))?;
    let new = toml::Value::try_from(cfg).map_err(|e| e.to_string())?;
    let (mut a, mut b) = (Default::default(), Default::default());
    flatten("", &old, &mut a);
    flatten("", &new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        let line = format!(
            "{k}: {} -> {}",
            x.map(String::as_str).unwrap_or("(unset)"),
            y.map(String::as_str).unwrap_or("(unset)")
        );
        if RESUMABLE_KEYS.contains(&k.as_str()) {
            allowed.push(line);
        } else {
            refused.push(line);
        }
    }
    if refused.is_empty() {
        Ok(allowed)
    } else {
        Err(format!(
            "the run being resumed was started with another recipe ({}); resume with the same settings (only {} may change) or use a new train.out_dir",
            refused.join(", "),
            RESUMABLE_KEYS.join(", ")
        ))
    }
}

/// AdamW with decoupled weight decay on matrices only (RMSNorm gains are not decayed).
fn adamw(cfg: &TrainConfig) -> ModuleOptimizer {
    let t = &cfg.train;
    let base = AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.epsilon as f32);
    let no_decay = ParamGroup::from_any_predicates(vec!["norm"]);
    base.clone()
        .with_weight_decay(t.weight_decay as f32)
        .init()
        .with_group(no_decay, base.with_weight_decay(0.0).build(), None)
}

/// Drop metric lines past `step` (written after the checkpoint a resumed run restarts from).
fn truncate_metrics(path: &Path, step: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(path, kept.as_bytes())
}

/// Append the validation row of step `step` to `metrics.jsonl` (the starting point and the
/// full validation at the end; burn-train's logger writes the ones in between).
fn log_eval(
    path: &Path,
    step: usize,
    tokens: u64,
    r: &EvalReport,
    kd: Option<&KdEval>,
) -> Result<(), TrainError> {
    let mut row = serde_json::json!({
        "step": step, "split": "validation", "tokens": tokens, "loss": r.loss,
        "perplexity": r.perplexity, "eval_tokens": r.tokens,
    });
    if let Some(kd) = kd {
        row["kl_to_teacher"] = kd.kl.into();
        row["top1_agreement"] = kd.top1_agreement.into();
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{row}").and_then(|_| file.flush()))
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    ember_data::write_atomic_io(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::steps_per_epoch;
    use crate::batches::permutation;
    use crate::lr_at;

    #[test]
    fn burn_train_epochs_divide_the_validation_and_checkpoint_intervals() {
        assert_eq!(steps_per_epoch(25, 50), 25);
        assert_eq!(steps_per_epoch(100, 50), 50);
        assert_eq!(steps_per_epoch(140, 140), 140);
        assert_eq!(steps_per_epoch(4, 6), 2);
        // no validation: epochs are the checkpoint interval
        assert_eq!(steps_per_epoch(0, 50), 50);
    }

    #[test]
    fn lr_schedule_warms_up_then_decays_to_min() {
        let lr = |s| lr_at(s, 10, 110, 1e-3, 1e-4);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!((lr(60) - 5.5e-4).abs() < 1e-12);
        assert!((lr(110) - 1e-4).abs() < 1e-12);
        assert!(lr(30) > lr(31));
    }

    #[test]
    fn permutations_differ_per_epoch_and_repeat_per_seed() {
        let a = permutation(100, 1, 0, 0);
        assert_eq!(a, permutation(100, 1, 0, 0));
        assert_ne!(a, permutation(100, 1, 1, 0));
        assert_ne!(a, permutation(100, 1, 0, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
