//! The training loop, top to bottom.
//!
//! Each optimizer step: `grad_accum` micro-batches of `batch_size` packed rows, each
//! row's first `seq_len - 1` tokens predicting the next; gradients averaged over the
//! micro-batches, clipped by their global L2 norm, then one AdamW update at the
//! warmup+cosine learning rate of that step. Every `checkpoint_every` steps the model,
//! the optimizer state and the data position are written to `checkpoints/step-N/`
//! (via a temporary directory and a rename), so a killed run resumes exactly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamGroup};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use ember_data::{Split, TokenDataset};
use ember_student::{Student, StudentConfig, save_hf};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

pub use crate::distill::KdEval;
use crate::distill::{build_source, evaluate_kd, top1_agreement};
use crate::{EvalReport, HiddenLoss, TrainConfig, TrainError, evaluate, loss_from_hidden};

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
}

/// Position of the run, saved with every checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RunState {
    step: usize,
    epoch: usize,
    /// Rows of the current epoch's permutation already consumed.
    cursor: usize,
    tokens: u64,
}

/// Learning rate at optimizer step `step` (0-based): linear warmup to `peak` over
/// `warmup` steps, then cosine decay to `min` at `total`.
pub fn lr_at(step: usize, warmup: usize, total: usize, peak: f64, min: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = ((step - warmup) as f64 / (total - warmup).max(1) as f64).min(1.0);
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
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
    let resumed_from = latest_checkpoint(&ckpt_root)?;
    let cfg_path = out.join("student_config.json");
    if resumed_from.is_some() {
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
    let mut model = match &t.init_from {
        // the checkpoint's weights; its token ids must mean the same as the dataset's
        Some(dir) => {
            crate::distill::check_model_tokenizer(dir, manifest, &cfg.data.dataset)?;
            ember_student::load_hf(dir, &ad)?.0
        }
        None => student_cfg.init(&ad),
    };
    let mut optim = adamw(cfg);
    let mut state = RunState::default();
    if let Some(dir) = &resumed_from {
        (model, optim, state) = load_checkpoint(dir, model, optim, &ad)?;
        truncate_metrics(&out.join("metrics.jsonl"), state.step)?;
        eprintln!("resuming from {} (step {})", dir.display(), state.step);
    }
    let resumed_from_step = resumed_from.as_ref().map(|_| state.step);

    let seq_len = train_data.seq_len();
    let tokens_per_row = (seq_len - 1) as u64;
    let kd = cfg.distill.clone().unwrap_or_default();
    let (mut source, valid_teacher) = build_source(cfg, train_data, device)?;
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
    source.start_epoch(t.seed, state.epoch);
    let distilling = cfg.teacher.is_some();
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("metrics.jsonl"))
        .map_err(|source| TrainError::Io {
            path: out.join("metrics.jsonl"),
            source,
        })?;
    let bar = ProgressBar::new(t.max_steps as u64)
        .with_position(state.step as u64)
        .with_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps {msg}",
            )
            .expect("template"),
        );
    bar.set_prefix("train");
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}")
        } else {
            bar.println(line)
        }
    };

    let start = Instant::now();
    let start_tokens = state.tokens;
    let (mut window_loss, mut window_steps, mut window_start, mut window_tokens) =
        (0.0f64, 0usize, Instant::now(), 0u64);
    let mut last_loss = f64::NAN;
    let (mut window_kd, mut window_ce, mut window_top1) = (0.0f64, 0.0f64, 0.0f64);
    // Validation loss on real text, plus KL/agreement with the teacher when distilling; logged.
    let validate = |student: &Student, batches: usize| -> (EvalReport, Option<KdEval>) {
        let report = evaluate(student, &valid_data, t.batch_size, batches, device);
        let kd = valid_teacher
            .as_ref()
            .map(|v| evaluate_kd(student, v, &valid_data, t.batch_size, batches, device));
        (report, kd)
    };
    if state.step == 0 && t.eval_every > 0 {
        // the starting point of the validation curves
        let (report, kd_report) = validate(&model.valid(), t.eval_batches);
        log_eval(&mut metrics, out, &state, &report, kd_report.as_ref())?;
        window_start = Instant::now();
    }
    while state.step < t.max_steps {
        let lr = lr_at(state.step, t.warmup_steps, t.max_steps, t.lr, t.min_lr);
        let mut accum = GradientsAccumulator::<Student>::new();
        let mut step_loss = 0.0f64;
        for _ in 0..t.grad_accum {
            if state.cursor + t.batch_size > source.len() {
                state.epoch += 1;
                state.cursor = 0;
                source.start_epoch(t.seed, state.epoch);
            }
            let batch = source.batch(
                state.cursor,
                t.batch_size,
                student_cfg.vocab_size,
                kd.temperature,
                &ad,
            )?;
            state.cursor += t.batch_size;
            // losses in f32 whatever the compute precision
            // logits chunk by chunk inside the loss, never as a whole [b, t, V] tensor
            let hidden = model.forward_hidden(batch.inputs, None);
            let HiddenLoss { out, argmax } = loss_from_hidden(
                hidden,
                model.head_weight(),
                batch.teacher.as_ref(),
                batch.targets,
                &kd,
            );
            if let Some(teacher) = &batch.teacher {
                window_kd += out.kd.clone().into_scalar::<f64>() / t.grad_accum as f64;
                window_ce += out.ce.clone().into_scalar::<f64>() / t.grad_accum as f64;
                let argmax = argmax.into_data().try_into_vec_as::<i64>().expect("argmax");
                window_top1 += top1_agreement(&argmax, &teacher.top1) / t.grad_accum as f64;
            }
            let loss = out.total;
            let grads = loss.clone().div_scalar(t.grad_accum as f64).backward();
            accum.accumulate(&model, GradientsParams::from_grads(grads, &model));
            step_loss += loss.into_scalar::<f64>() / t.grad_accum as f64;
            state.tokens += t.batch_size as u64 * tokens_per_row;
            window_tokens += t.batch_size as u64 * tokens_per_row;
        }
        let (grads, grad_norm) = clip_global_norm(&model, accum.grads(), t.grad_clip);
        model = optim.step(lr, model, grads);
        state.step += 1;
        bar.inc(1);
        last_loss = step_loss;
        window_loss += step_loss;
        window_steps += 1;

        if state.step % t.log_every == 0 || state.step == t.max_steps {
            let loss = window_loss / window_steps as f64;
            let tps = window_tokens as f64 / window_start.elapsed().as_secs_f64();
            let mut row = serde_json::json!({
                "step": state.step, "split": "train", "tokens": state.tokens, "loss": loss,
                "perplexity": loss.exp(), "lr": lr, "grad_norm": grad_norm, "tokens_per_second": tps,
                "elapsed_seconds": start.elapsed().as_secs_f64(),
            });
            if distilling {
                let n = window_steps as f64;
                let ce = window_ce / n;
                row["kd_loss"] = (window_kd / n).into();
                row["ce"] = ce.into();
                row["perplexity"] = ce.exp().into();
                row["top1_agreement"] = (window_top1 / n).into();
                (window_kd, window_ce, window_top1) = (0.0, 0.0, 0.0);
            }
            append_line(&mut metrics, &out.join("metrics.jsonl"), &row)?;
            bar.set_message(format!("loss {loss:.3} | lr {lr:.2e} | {tps:.0} tok/s"));
            if bar.is_hidden() {
                let detail = match (
                    row["kd_loss"].as_f64(),
                    row["ce"].as_f64(),
                    row["top1_agreement"].as_f64(),
                ) {
                    (Some(kd), Some(ce), Some(a)) => format!(
                        "kd {kd:.4}  ce {ce:.4}  ppl {:>8.2}  top-1 {a:.3}",
                        ce.exp()
                    ),
                    _ => format!("ppl {:>8.2}", loss.exp()),
                };
                say(format!(
                    "step {:>6}  loss {loss:.4}  {detail}  lr {lr:.2e}  gnorm {grad_norm:.3}  {tps:.0} tok/s",
                    state.step
                ));
            }
            (window_loss, window_steps, window_start, window_tokens) = (0.0, 0, Instant::now(), 0);
        }
        if t.eval_every > 0 && state.step % t.eval_every == 0 && state.step < t.max_steps {
            let (report, kd_report) = validate(&model.valid(), t.eval_batches);
            log_eval(&mut metrics, out, &state, &report, kd_report.as_ref())?;
            say(format!(
                "step {:>6}  validation loss {:.4}  ppl {:.2}{}",
                state.step,
                report.loss,
                report.perplexity,
                kd_report
                    .map(|k| format!(
                        "  KL to teacher {:.4}  top-1 agreement {:.3}",
                        k.kl, k.top1_agreement
                    ))
                    .unwrap_or_default()
            ));
            window_start = Instant::now();
        }
        if state.step % t.checkpoint_every == 0 || state.step == t.max_steps {
            save_checkpoint(&ckpt_root, &model, &optim, &state, t.keep_checkpoints)?;
        }
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let valid_model = model.valid();
    let (validation, validation_kd) = validate(&valid_model, 0);
    log_eval(
        &mut metrics,
        out,
        &state,
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
    let trained_tokens = state.tokens - start_tokens;
    let summary = TrainSummary {
        steps: state.step,
        tokens: state.tokens,
        seconds,
        tokens_per_second: trained_tokens as f64 / seconds.max(1e-9),
        final_train_loss: last_loss,
        validation,
        validation_kd,
        unigram_validation_perplexity: manifest.unigram.validation_perplexity,
        num_params: student_cfg.num_params(),
        model_dir,
        resumed_from_step,
    };
    write_file(
        &out.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .expect("serializes")
            .as_bytes(),
    )?;
    Ok(summary)
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

/// Scale all gradients so that their global L2 norm is at most `max_norm` (0 = no clipping).
/// Returns the norm before clipping. Burn's own `GradientClipping::Norm` clips each tensor
/// separately, which is not what LLM recipes mean by clipping.
fn clip_global_norm<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(p.id) {
                self.sum += g.square().sum().into_scalar::<f64>();
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(p.id) {
                self.grads.register::<D>(p.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut norm = SquaredNorm {
        grads: &grads,
        sum: 0.0,
    };
    model.visit(&mut norm);
    let norm = norm.sum.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        model.visit(&mut Scale {
            grads: &mut grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    (grads, norm)
}

fn checkpoint_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// The newest complete checkpoint (half-written ones end in `.tmp` and are ignored).
fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>, TrainError> {
    let entries = std::fs::read_dir(root).map_err(|source| TrainError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut steps: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            p.join("state.json").is_file().then_some((step, p))
        })
        .collect();
    steps.sort();
    Ok(steps.pop().map(|(_, p)| p))
}

fn save_checkpoint(
    root: &Path,
    model: &Student,
    optim: &ModuleOptimizer,
    state: &RunState,
    keep: usize,
) -> Result<(), TrainError> {
    let dir = checkpoint_dir(root, state.step);
    let tmp = dir.with_extension("tmp");
    let err = |message: String| TrainError::Checkpoint {
        path: dir.clone(),
        message,
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(e.to_string()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(e.to_string()))?;
    model
        .clone()
        .save_file(tmp.join("model.bpk"))
        .map_err(|e| err(format!("saving model: {e}")))?;
    optim
        .save(tmp.join("optim.bpk"))
        .map_err(|e| err(format!("saving optimizer: {e}")))?;
    write_file(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(state)
            .expect("serializes")
            .as_bytes(),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| err(e.to_string()))?;
    // prune: keep the newest `keep` checkpoints
    let mut all: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| err(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    all.sort();
    let excess = all.len().saturating_sub(keep.max(1));
    for old in &all[..excess] {
        std::fs::remove_dir_all(old).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    model: Student,
    optim: ModuleOptimizer,
    device: &Device,
) -> Result<(Student, ModuleOptimizer, RunState), TrainError> {
    let err = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let model = model
        .try_load_file(dir.join("model.bpk"))
        .map_err(|e| err(format!("model weights: {e}")))?
        .fork(device);
    let optim = optim
        .load(dir.join("optim.bpk"))
        .map_err(|e| err(format!("optimizer state: {e}")))?;
    let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| err(e.to_string()))?;
    let state = serde_json::from_str(&text).map_err(|e| err(format!("state.json: {e}")))?;
    Ok((model, optim, state))
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

fn log_eval(
    metrics: &mut std::fs::File,
    out: &Path,
    state: &RunState,
    r: &EvalReport,
    kd: Option<&KdEval>,
) -> Result<(), TrainError> {
    let mut row = serde_json::json!({
        "step": state.step, "split": "validation", "tokens": state.tokens, "loss": r.loss,
        "perplexity": r.perplexity, "eval_tokens": r.tokens,
    });
    if let Some(kd) = kd {
        row["kl_to_teacher"] = kd.kl.into();
        row["top1_agreement"] = kd.top1_agreement.into();
    }
    append_line(metrics, &out.join("metrics.jsonl"), &row)
}

fn append_line(
    file: &mut std::fs::File,
    path: &Path,
    row: &serde_json::Value,
) -> Result<(), TrainError> {
    writeln!(file, "{row}")
        .and_then(|_| file.flush())
        .map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp-write");
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::permutation;

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
