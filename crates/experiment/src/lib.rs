//! Experiments that compare Ember runs. `train-the-trainer`: does a student distilled from a
//! bigger teacher reach a given validation perplexity with fewer tokens (and FLOPs) than the
//! same student trained from scratch on hard labels? Runs the teacher (trained here or given by
//! path), records its logits once (Arrow, the same files `ember record` writes), trains the
//! student from scratch and distilled for the same token budget, and writes a report directory.

mod error;
pub mod flops;
pub mod plot;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{Split, TokenDataset, load_tokenizer, tokenizer_hash};
use ember_teacher::{LocalTeacher, RecordConfig, load_teacher, record};
use ember_train::{
    DataSection, KdConfig, ModelSection, TeacherSection, TrainConfig, TrainSection, load_config,
    train,
};
use serde::{Deserialize, Serialize};

pub use error::ExperimentError;
pub use flops::{ModelShape, model_shape};
pub use report::{Point, Report, RunResult};

/// `configs/experiments/<x>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub experiment: ExperimentSection,
    pub teacher: TeacherSpec,
    /// The student's shape (same keys as `[model]` of a training recipe).
    #[serde(default)]
    pub student: ModelSection,
    /// Optimiser and schedule shared by every student run (same keys as `[train]`);
    /// `out_dir`, `max_steps` and `eval_every` are set by the experiment.
    #[serde(default)]
    pub train: TrainSection,
    /// Student runs. Exactly one without `distill` is the from-scratch baseline.
    pub runs: Vec<RunSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Report and run directory.
    pub out_dir: PathBuf,
    /// Prepared dataset (`ember data prepare`).
    pub dataset: PathBuf,
    /// Training tokens per student run (rounded up to whole optimizer steps; one epoch
    /// over the first rows of the train split, the rows the teacher is recorded on).
    pub tokens: u64,
    /// Validation points per run, evenly spaced, plus step 0.
    #[serde(default = "default_eval_points")]
    pub eval_points: usize,
    /// Validation batches per point (0 = the whole validation split).
    #[serde(default)]
    pub eval_batches: usize,
    /// Rows per teacher forward while recording.
    #[serde(default = "default_record_batch")]
    pub record_batch_size: usize,
    /// How the teacher's recording is encoded: `{ format = "full" }` (logits format v1, the
    /// default) or `{ format = "compact", mass = 1.0, step = 0.125, compression = "zstd" }`
    /// (v2, about a fifth of the bytes; see `ember record --format v2`).
    #[serde(default)]
    pub logits: ember_data::LogitsCodec,
}

fn default_eval_points() -> usize {
    6
}
fn default_record_batch() -> usize {
    16
}

/// The teacher: an existing HF checkpoint, or a recipe trained here with cross-entropy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    /// HF model directory (any architecture `ember record` runs).
    pub checkpoint: Option<PathBuf>,
    /// Training recipe (as for `ember train`) trained into `<out_dir>/teacher` first.
    pub recipe: Option<PathBuf>,
    /// Overrides applied to the recipe, e.g. ["train.max_steps=2000"].
    #[serde(default)]
    pub recipe_overrides: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub name: String,
    /// Teacher entries per position kept from the recording (distilled runs).
    pub top_k: Option<usize>,
    /// Distillation loss; absent = cross-entropy from scratch.
    pub distill: Option<KdConfig>,
}

impl ExperimentConfig {
    pub fn load(path: &Path) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ExperimentError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.check().map_err(|message| ExperimentError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let baselines = self.runs.iter().filter(|r| r.distill.is_none()).count();
        if baselines != 1 {
            return Err(format!(
                "need exactly one run without `distill` (the from-scratch baseline), found {baselines}"
            ));
        }
        let mut names: Vec<&str> = self.runs.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("run names must be unique".into());
        }
        if self.runs.iter().any(|r| {
            r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        }) {
            return Err(
                "run names must be non-empty and use letters, digits, '-', '_', '.'".into(),
            );
        }
        match (&self.teacher.checkpoint, &self.teacher.recipe) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("[teacher] needs exactly one of `checkpoint` or `recipe`".into()),
        }
        if self.experiment.tokens == 0 || self.experiment.eval_points == 0 {
            return Err("experiment.tokens and experiment.eval_points must be positive".into());
        }
        Ok(())
    }

    /// Largest top-k any distilled run asks for (the recording keeps this many).
    fn record_k(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.distill.is_some())
            .map(|r| r.top_k.unwrap_or(32))
            .max()
            .unwrap_or(0)
    }
}

/// Run (or resume: finished runs and recordings are reused) the experiment; writes the report.
pub fn run_train_the_trainer(
    cfg: &ExperimentConfig,
    device: &Device,
) -> Result<Report, ExperimentError> {
    let e = &cfg.experiment;
    let out = &e.out_dir;
    mkdir(out)?;
    write(
        &out.join("experiment.toml"),
        toml::to_string_pretty(cfg).expect("config serializes"),
    )?;

    // 1. teacher
    let (teacher_dir, teacher_train) = prepare_teacher(cfg, device)?;

    // the student budget in steps and rows
    let train_data = TokenDataset::open(&e.dataset, Split::Train)?;
    let seq = train_data.seq_len();
    let t = &cfg.train;
    let rows_per_step = t.batch_size * t.grad_accum;
    let tokens_per_step = (rows_per_step * (seq - 1)) as u64;
    let steps = e.tokens.div_ceil(tokens_per_step) as usize;
    let rows = steps * rows_per_step;
    if rows > train_data.len() {
        return Err(ExperimentError::Config {
            path: e.dataset.clone(),
            message: format!(
                "{} tokens need {rows} training rows, the train split has {}; lower experiment.tokens",
                e.tokens,
                train_data.len()
            ),
        });
    }
    let eval_every = (steps / e.eval_points).max(1);

    // 2. teacher logits, recorded once at the largest k, for the rows the students see
    let k = cfg.record_k();
    let logits_train = out.join("logits/train");
    let logits_valid = out.join("logits/validation");
    let mut recording = None;
    if k > 0 {
        let start = Instant::now();
        let mut teacher = local_teacher(&teacher_dir, device)?;
        for (split, dir, max_rows) in [
            (Split::Train, &logits_train, Some(rows)),
            (Split::Validation, &logits_valid, None),
        ] {
            let rc = RecordConfig {
                data: e.dataset.clone(),
                split,
                out: dir.clone(),
                k,
                temperature: 1.0,
                batch_size: e.record_batch_size,
                shard_rows: 1024,
                max_rows,
                codec: e.logits,
            };
            record(&mut teacher, &rc).map_err(|source| ExperimentError::Record {
                path: dir.clone(),
                source,
            })?;
        }
        let manifest = ember_data::LogitsManifest::load(&logits_train)?;
        recording = Some(report::Recording {
            k,
            train_positions: manifest.positions,
            bytes_per_token: manifest.bytes_per_token,
            seconds_this_invocation: start.elapsed().as_secs_f64(),
        });
    }

    // 3. students
    let mut results = Vec::new();
    for spec in &cfg.runs {
        let run_dir = out.join("runs").join(&spec.name);
        let teacher = spec.distill.as_ref().map(|_| TeacherSection {
            logits: Some(logits_train.clone()),
            validation_logits: Some(logits_valid.clone()),
            top_k: Some(spec.top_k.unwrap_or(32)),
            ..TeacherSection::default()
        });
        let tc = TrainConfig {
            data: DataSection {
                dataset: e.dataset.clone(),
                max_train_rows: Some(rows),
            },
            model: cfg.student.clone(),
            train: TrainSection {
                out_dir: run_dir.clone(),
                max_steps: steps,
                eval_every,
                eval_batches: e.eval_batches,
                ..cfg.train.clone()
            },
            teacher,
            distill: spec.distill.clone(),
            onpolicy: None,
        };
        eprintln!(
            "== run {} ({steps} steps, {} tokens)",
            spec.name,
            steps as u64 * tokens_per_step
        );
        let summary = train(&tc, device).map_err(|source| ExperimentError::Train {
            run: spec.name.clone(),
            source,
        })?;
        results.push(RunResult {
            name: spec.name.clone(),
            distilled: spec.distill.is_some(),
            top_k: spec.distill.as_ref().map(|_| spec.top_k.unwrap_or(32)),
            loss: spec.distill.as_ref().map(report::describe),
            points: report::read_points(&run_dir.join("metrics.jsonl"))?,
            num_params: summary.num_params,
            seconds: summary.seconds,
            tokens_per_second: summary.tokens_per_second,
        });
    }

    // 4. report
    let student_shape = flops::student_shape(&run_dir_config(out, &cfg.runs[0].name)?, seq);
    let teacher_shape = model_shape(&teacher_dir, seq)?;
    let report = Report::new(
        cfg,
        teacher_dir,
        teacher_train,
        teacher_shape,
        student_shape,
        recording,
        results,
    );
    report.write(out)?;
    Ok(report)
}

/// The teacher's directory and, when known, its training cost (tokens, params).
fn prepare_teacher(
    cfg: &ExperimentConfig,
    device: &Device,
) -> Result<(PathBuf, Option<report::TeacherTraining>), ExperimentError> {
    let dir = match (&cfg.teacher.checkpoint, &cfg.teacher.recipe) {
        (Some(dir), _) => dir.clone(),
        (None, Some(recipe)) => {
            let teacher_out = cfg.experiment.out_dir.join("teacher");
            let mut overrides = cfg.teacher.recipe_overrides.clone();
            overrides.push(format!(
                "data.dataset={}",
                toml::Value::String(cfg.experiment.dataset.display().to_string())
            ));
            overrides.push(format!(
                "train.out_dir={}",
                toml::Value::String(teacher_out.display().to_string())
            ));
            let tc =
                load_config(Some(recipe), &overrides).map_err(|source| ExperimentError::Train {
                    run: "teacher".into(),
                    source,
                })?;
            eprintln!(
                "== teacher: training {} with cross-entropy",
                recipe.display()
            );
            train(&tc, device).map_err(|source| ExperimentError::Train {
                run: "teacher".into(),
                source,
            })?;
            teacher_out.join("model")
        }
        (None, None) => unreachable!("checked"),
    };
    // an Ember-trained model has summary.json beside its model directory
    let training = dir
        .parent()
        .map(|p| p.join("summary.json"))
        .filter(|p| p.is_file())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            Some(report::TeacherTraining {
                tokens: v["tokens"].as_u64()?,
                num_params: v["num_params"].as_u64()?,
                validation_perplexity: v["validation"]["perplexity"].as_f64()?,
            })
        });
    Ok((dir, training))
}

fn local_teacher(dir: &Path, device: &Device) -> Result<LocalTeacher, ExperimentError> {
    let teacher =
        load_teacher(dir, device, DType::F32).map_err(|source| ExperimentError::Record {
            path: dir.to_path_buf(),
            source,
        })?;
    let tok = dir.join("tokenizer.json");
    let tokenizer_sha256 = if tok.is_file() {
        Some(tokenizer_hash(&load_tokenizer(&tok)?, &tok)?.sha256)
    } else {
        None
    };
    Ok(LocalTeacher {
        teacher,
        dir: dir.to_path_buf(),
        tokenizer_sha256,
        device: device.clone(),
    })
}

fn run_dir_config(out: &Path, run: &str) -> Result<ember_student::StudentConfig, ExperimentError> {
    let path = out.join("runs").join(run).join("student_config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ExperimentError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ExperimentError::Metrics {
        path,
        message: e.to_string(),
    })
}

fn mkdir(path: &Path) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(path).map_err(|source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Atomic write: temp file then rename.
pub(crate) fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), ExperimentError> {
    ember_data::write_atomic(path, text.as_ref()).map_err(|e| ExperimentError::Metrics {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped small recipe, with `extra` added to its `[experiment]` table.
    fn small_with(extra: &str) -> Result<ExperimentConfig, toml::de::Error> {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/experiments/small.toml");
        let text = std::fs::read_to_string(path).unwrap();
        toml::from_str(&text.replacen("[experiment]\n", &format!("[experiment]\n{extra}\n"), 1))
    }

    #[test]
    fn the_recording_format_is_a_recipe_key() {
        assert_eq!(
            small_with("").unwrap().experiment.logits,
            ember_data::LogitsCodec::Full
        );
        let cfg = small_with(
            r#"logits = { format = "compact", mass = 0.99, step = 0.0625, compression = "lz4" }"#,
        )
        .unwrap();
        assert_eq!(
            cfg.experiment.logits,
            ember_data::LogitsCodec::Compact(ember_data::CompactCodec {
                mass: 0.99,
                step: 0.0625,
                compression: ember_data::IpcCompression::Lz4,
                coder: ember_data::EntryCoder::Planes,
            })
        );
        let cfg = small_with(
            r#"logits = { format = "compact", mass = 1.0, step = 0.125, compression = "zstd", coder = "rans" }"#,
        )
        .unwrap();
        assert_eq!(
            cfg.experiment.logits,
            ember_data::LogitsCodec::Compact(ember_data::CompactCodec {
                coder: ember_data::EntryCoder::Rans,
                ..Default::default()
            })
        );
        let err = small_with(r#"logits = { format = "v3" }"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("v3"), "{err}");
    }
}
