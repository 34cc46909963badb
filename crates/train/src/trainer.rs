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
use burn_train::metric::LearningRateMetric;
use burn_train::{Learner, SupervisedTraining};
use ember_data::{DatasetManifest, Split, TokenDataset};
use ember_student::{Student, StudentConfig, save_hf};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

pub use crate::distill::KdEval;
use crate::distill::build_source;
use crate::feed::{FeedConfig, TrainFeed, TrainLoader, ValidLoader, ValidSet};
use crate::learner::{Distiller, NonFiniteGuard, WarmupCosine};
use crate::monitor::{
    EveryNSteps, JsonlLogger, RunShape, StatMetric, StepBar, StepCheckpoints, TokensPerSecond,
};
use crate::onpolicy::OnPolicyStats;
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
/// is enabled here): prepare the data and the student's shape, resume from the last
/// checkpoint if there is one, launch burn-train, then validate and save.
pub fn train(cfg: &TrainConfig, device: &Device) -> Result<TrainSummary, TrainError> {
    let (run, data) = prepare(cfg)?;
    resume(&run)?;
    let trained = launch(&run, data, device)?;
    finish(&run, trained, device)
}

/// A run before anything trains: its recipe, the dataset's manifest, the student's
/// shape, how burn-train epochs map onto steps and which checkpoints are on disk.
struct Run<'a> {
    cfg: &'a TrainConfig,
    manifest: DatasetManifest,
    student_cfg: StudentConfig,
    shape: RunShape,
    checkpoints: StepCheckpoints,
    /// Steps of the checkpoints on disk, oldest first.
    saved: Vec<usize>,
}

/// The training and validation splits.
struct Splits {
    train: TokenDataset,
    valid: TokenDataset,
}

impl Run<'_> {
    fn out(&self) -> &Path {
        &self.cfg.train.out_dir
    }

    fn resumed_from_step(&self) -> Option<usize> {
        self.saved.last().copied()
    }

    /// The optimizer step this invocation starts from.
    fn start_step(&self) -> usize {
        self.resumed_from_step().unwrap_or(0)
    }
}

/// Open the dataset, resolve the student's shape and check that the two fit together.
fn prepare(cfg: &TrainConfig) -> Result<(Run<'_>, Splits), TrainError> {
    let t = &cfg.train;
    let mut train = TokenDataset::open(&cfg.data.dataset, Split::Train)?;
    if let Some(n) = cfg.data.max_train_rows {
        train.truncate(n);
    }
    let valid = TokenDataset::open(&cfg.data.dataset, Split::Validation)?;
    let manifest = train.manifest.clone();
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
    if valid.is_empty() {
        return Err(TrainError::Config {
            path: cfg.data.dataset.clone(),
            message: "the validation split is empty; prepare the dataset with --val-fraction > 0"
                .into(),
        });
    }
    check_one_batch(cfg, train.len(), "training rows")?;

    let ckpt_root = t.out_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_root).map_err(|source| TrainError::Io {
        path: ckpt_root.clone(),
        source,
    })?;
    let shape = RunShape::new(
        t.eval_every,
        t.checkpoint_every,
        t.max_steps,
        t.grad_accum,
        (t.batch_size * t.grad_accum * (train.seq_len() - 1)) as u64,
    );
    let checkpoints = StepCheckpoints::new(ckpt_root.clone(), shape.clone());
    let saved = checkpoints.steps().map_err(|source| TrainError::Io {
        path: ckpt_root,
        source,
    })?;
    let run = Run {
        cfg,
        manifest,
        student_cfg,
        shape,
        checkpoints,
        saved,
    };
    Ok((run, Splits { train, valid }))
}

/// An error unless `rows` (of what `what` names) make at least one batch.
fn check_one_batch(cfg: &TrainConfig, rows: usize, what: &str) -> Result<(), TrainError> {
    if rows < cfg.train.batch_size {
        return Err(TrainError::Config {
            path: cfg.data.dataset.clone(),
            message: format!(
                "{rows} {what}, fewer than one batch of {}",
                cfg.train.batch_size
            ),
        });
    }
    Ok(())
}

/// Check that the last checkpoint, if any, is of the same model and recipe and readable (its
/// later metric rows are dropped); then write the recipe and the student's config beside
/// the run.
fn resume(run: &Run) -> Result<(), TrainError> {
    let out = run.out();
    let cfg_path = out.join("student_config.json");
    let recipe_path = out.join("train_config.toml");
    if let Some(step) = run.resumed_from_step() {
        // a checkpoint of another shape cannot be resumed: say so before touching anything
        let saved = std::fs::read_to_string(&cfg_path).map_err(|source| TrainError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let saved: StudentConfig =
            serde_json::from_str(&saved).map_err(|e| TrainError::Checkpoint {
                path: cfg_path.clone(),
                message: e.to_string(),
            })?;
        if saved != run.student_cfg {
            return Err(TrainError::Checkpoint {
                path: cfg_path,
                message: format!(
                    "{} holds a run of another model shape ({saved:?}); use a new train.out_dir or delete the old run",
                    out.display()
                ),
            });
        }
        if recipe_path.is_file() {
            let saved = std::fs::read_to_string(&recipe_path).map_err(|source| TrainError::Io {
                path: recipe_path.clone(),
                source,
            })?;
            let changes =
                recipe_changes(&saved, run.cfg).map_err(|message| TrainError::Checkpoint {
                    path: recipe_path.clone(),
                    message,
                })?;
            for change in changes {
                eprintln!("resuming with a changed recipe: {change}");
            }
        }
        let dir = run.checkpoints.dir(step);
        check_checkpoint(&dir, step)?;
        truncate_metrics(&out.join("metrics.jsonl"), step)?;
        eprintln!("resuming from {} (step {step})", dir.display());
    }
    write_file(
        &recipe_path,
        toml::to_string_pretty(run.cfg)
            .expect("config serializes")
            .as_bytes(),
    )?;
    write_file(&cfg_path, run.student_cfg.to_string().as_bytes())
}

/// What a launched run hands to [`finish`].
struct Trained {
    /// The student after the last step (no autodiff).
    student: Student,
    valid: Arc<ValidSet>,
    /// Wall time of this invocation's steps.
    seconds: f64,
    final_train_loss: f64,
    onpolicy: Option<Arc<Mutex<OnPolicyStats>>>,
}

/// Build the student, its feed and burn-train's training, and run the steps from
/// the run's start step to `train.max_steps`.
fn launch(run: &Run, splits: Splits, device: &Device) -> Result<Trained, TrainError> {
    let (cfg, t, out) = (run.cfg, &run.cfg.train, run.out());
    let start_step = run.start_step();
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
            crate::distill::check_model_tokenizer(dir, &run.manifest, &cfg.data.dataset)?;
            ember_student::load_hf(dir, &ad)?.0
        }
        None => run.student_cfg.init(&ad),
    };
    let (feed, valid, pipeline) = build_feed(run, splits, device)?;
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
    let distilling = cfg.teacher.is_some();
    let mut logger = JsonlLogger::open(
        &metrics_path,
        run.shape.clone(),
        t.log_every,
        distilling,
        bar.clone(),
    )
    .map_err(|source| TrainError::Io {
        path: metrics_path.clone(),
        source,
    })?;
    let last_loss = logger.last_loss.clone();
    let onpolicy = pipeline.as_ref().map(|p| p.stats.clone());
    logger.onpolicy = onpolicy.clone();
    let training = supervised_training(run, feed, valid.clone(), logger, &bar, &ad, device);

    let guard = NonFiniteGuard {
        first_step: start_step,
        max_skips: t.max_nonfinite_steps,
        interrupter: training.interrupter(),
        ..NonFiniteGuard::default()
    };
    let mut distiller = Distiller::new(student, t.grad_clip, guard.clone());
    let policy = pipeline.map(|p| p.policy);
    if let Some(policy) = &policy {
        // the sampler starts from the weights this process starts from: the checkpoint's
        // (burn-train loads them again at launch)
        if let Some(step) = run.resumed_from_step() {
            distiller = distiller.load_record(read_model_record(&run.checkpoints.dir(step))?);
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
            path: out.to_path_buf(),
            message: error.to_string(),
        });
    }
    if let Some(message) = guard.stopped.lock().expect("stop reason").take() {
        return Err(TrainError::NonFinite {
            path: out.to_path_buf(),
            message,
        });
    }
    let final_train_loss = *last_loss.lock().expect("last loss");
    Ok(Trained {
        student: result.model.student,
        valid,
        seconds: start.elapsed().as_secs_f64(),
        final_train_loss,
        onpolicy,
    })
}

/// The sampler's side of on-policy distillation, kept by the driver.
struct OnPolicyHandles {
    policy: Arc<crate::onpolicy::Policy>,
    stats: Arc<Mutex<OnPolicyStats>>,
}

/// The training feed positioned at the run's start step (with the on-policy sampler when the
/// recipe has one) and the validation set.
fn build_feed(
    run: &Run,
    splits: Splits,
    device: &Device,
) -> Result<
    (
        Arc<Mutex<TrainFeed>>,
        Arc<ValidSet>,
        Option<OnPolicyHandles>,
    ),
    TrainError,
> {
    let (cfg, t) = (run.cfg, &run.cfg.train);
    let start_step = run.start_step();
    let seq_len = splits.train.seq_len();
    let prompts = match &cfg.onpolicy {
        Some(o) => Some(crate::onpolicy::prompts_of(&splits.train, o.prompt_tokens)?),
        None => None,
    };
    let (source, valid_teacher, scorer) = build_source(cfg, splits.train, device)?;
    check_one_batch(cfg, source.len(), "training rows")?;
    let pipeline = match (&cfg.onpolicy, scorer, prompts) {
        (Some(o), Some(scorer), Some(prompts)) => {
            if o.lambda > 0.0 {
                check_one_batch(cfg, prompts.len(), "prompts")?;
            }
            // a fresh run drops the log of an earlier attempt in this directory
            let log = run.out().join("onpolicy.jsonl");
            truncate_metrics(&log, start_step)?;
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
                    stop_token: Some(run.manifest.eos_token_id),
                },
                k: onpolicy_k(cfg),
                vocab: run.manifest.vocab_size,
            };
            Some(crate::feed::OnPolicyFeed {
                pipeline: crate::onpolicy::Pipeline::start(
                    plan,
                    prompts,
                    scorer,
                    device.clone(),
                    log,
                    (t.batch_size * (seq_len - 1)) as u64,
                ),
                objective: o.objective,
                k: onpolicy_k(cfg),
            })
        }
        _ => None,
    };
    let handles = pipeline.as_ref().map(|p| OnPolicyHandles {
        policy: p.pipeline.policy.clone(),
        stats: p.pipeline.stats.clone(),
    });
    let feed = TrainFeed::new(
        source,
        FeedConfig {
            batch_size: t.batch_size,
            shape: run.shape.clone(),
            student_vocab: run.student_cfg.vocab_size,
            seed: t.seed,
            kd: cfg.distill.clone().unwrap_or_default(),
            onpolicy_share: cfg.onpolicy.as_ref().map_or(0.0, |o| o.lambda),
        },
        start_step,
        pipeline,
    );
    let valid = ValidSet {
        data: splits.valid,
        teacher: valid_teacher,
        batch_size: t.batch_size,
        student_vocab: run.student_cfg.vocab_size,
    };
    Ok((Arc::new(Mutex::new(feed)), Arc::new(valid), handles))
}

/// burn-train's supervised training of the run: its loaders, metrics, `metrics.jsonl`
/// logger, progress bar, step-numbered checkpoints and gradient accumulation; resumed
/// from the last checkpoint when there is one.
#[allow(clippy::too_many_arguments)]
fn supervised_training(
    run: &Run,
    feed: Arc<Mutex<TrainFeed>>,
    valid: Arc<ValidSet>,
    logger: JsonlLogger,
    bar: &ProgressBar,
    ad: &Device,
    device: &Device,
) -> SupervisedTraining<Distiller> {
    let (t, shape) = (&run.cfg.train, &run.shape);
    let distilling = run.cfg.teacher.is_some();
    let mut training = SupervisedTraining::<Distiller>::new(
        run.out(),
        Arc::new(TrainLoader {
            feed: feed.clone(),
            device: ad.clone(),
        }),
        Arc::new(ValidLoader {
            set: valid,
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
        run.checkpoints.part("model"),
        run.checkpoints.part("optim"),
        run.checkpoints.part("scheduler"),
    )
    .with_checkpointing_strategy(EveryNSteps {
        shape: shape.clone(),
        every: t.checkpoint_every,
        keep: t.keep_checkpoints,
        saved: run.saved.iter().map(|&s| shape.epoch_of_step(s)).collect(),
    })
    .num_epochs(shape.epoch_of_step(t.max_steps));
    for metric in StatMetric::training(distilling) {
        training = training.metric_train_numeric(metric);
    }
    training = training
        .metric_train_numeric(TokensPerSecond::default())
        .metric_train_numeric(LearningRateMetric::new());
    for metric in StatMetric::validation(distilling) {
        training = training.metric_valid_numeric(metric);
    }
    if t.grad_accum > 1 {
        training = training.grads_accumulation(t.grad_accum);
    }
    if let Some(step) = run.resumed_from_step() {
        training = training.checkpoint(shape.epoch_of_step(step));
    }
    training
}

/// The model record of the checkpoint in `dir`.
fn read_model_record(dir: &Path) -> Result<burn::store::ModuleRecord, TrainError> {
    let file = dir.join("model.bpk");
    let bytes = std::fs::read(&file).map_err(|source| TrainError::Io {
        path: file.clone(),
        source,
    })?;
    burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes)).map_err(|e| {
        TrainError::Checkpoint {
            path: file,
            message: e.to_string(),
        }
    })
}

/// The full validation after the last step, the model in HF layout beside its tokenizer,
/// and `summary.json`.
fn finish(run: &Run, trained: Trained, device: &Device) -> Result<TrainSummary, TrainError> {
    let (cfg, t, out, shape) = (run.cfg, &run.cfg.train, run.out(), &run.shape);
    let (validation, validation_kd) = trained.valid.evaluate(&trained.student, 0, device);
    validation.check_finite("final validation")?;
    // on-policy runs: generated tokens of their on-policy batches, whole rows of the others
    let (tokens, trained_tokens) = match &trained.onpolicy {
        Some(stats) => {
            let s = stats.lock().expect("on-policy stats");
            let offline = shape
                .micro_batches_before(t.max_steps - run.start_step())
                .saturating_sub(s.batches);
            (
                s.trained_positions(t.max_steps),
                s.generated_tokens + offline as u64 * s.offline_positions,
            )
        }
        None => (
            shape.tokens_at(t.max_steps),
            shape.tokens_at(t.max_steps - run.start_step()),
        ),
    };
    log_eval(
        &out.join("metrics.jsonl"),
        t.max_steps,
        tokens,
        &validation,
        validation_kd.as_ref(),
    )?;
    let model_dir = out.join("model");
    save_hf(&trained.student, &run.student_cfg, &model_dir, t.save_dtype)?;
    let tokenizer = cfg.data.dataset.join(&run.manifest.tokenizer_file);
    std::fs::copy(&tokenizer, model_dir.join("tokenizer.json")).map_err(|source| {
        TrainError::Io {
            path: tokenizer,
            source,
        }
    })?;
    let summary = TrainSummary {
        steps: t.max_steps,
        tokens,
        seconds: trained.seconds,
        tokens_per_second: trained_tokens as f64 / trained.seconds.max(1e-9),
        final_train_loss: trained.final_train_loss,
        validation,
        validation_kd,
        unigram_validation_perplexity: run.manifest.unigram.validation_perplexity,
        num_params: run.student_cfg.num_params(),
        model_dir,
        resumed_from_step: run.resumed_from_step(),
        onpolicy: trained
            .onpolicy
            .map(|s| s.lock().expect("on-policy stats").json()),
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
    use crate::batches::permutation;
    use crate::lr_at;

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
