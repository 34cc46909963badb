//! `ember record`: run a teacher over a prepared dataset and store, for every position,
//! its top-k next-token log-probabilities (normalised over the full vocabulary) in the
//! Arrow logits format of `ember_data`.
//!
//! Shard `s` holds dataset rows `[s * shard_rows, (s + 1) * shard_rows)` and is written
//! atomically; a rerun keeps the shards already on disk (after checking they come from
//! the same teacher and settings), so a killed recording resumes without duplicating or
//! losing rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use ember_data::{
    CodecStats, DatasetManifest, LogitsCodec, LogitsManifest, LogitsMeta, LogitsRow, LogitsShard,
    Split, TokenDataset, read_logits_shard, write_logits_shard,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::remote::ScoredRow;
use crate::{Teacher, TeacherError};

/// Top-k ids and log-probabilities for a batch of equal-length rows: `(ids, logprobs)` per row,
/// each `T * k`, position-major, most likely first.
pub type TopK = Vec<(Vec<i32>, Vec<f32>)>;

/// Anything that yields teacher distributions: a local model or a serving engine.
pub trait LogitSource {
    /// Name recorded as `teacher`.
    fn name(&self) -> String;
    /// Identity of the teacher's weights/config.
    fn config_sha256(&self) -> String;
    /// Output-layer size (may exceed the tokenizer's by padding), if known.
    fn vocab_size(&self) -> Option<usize>;
    /// SHA-256 of the teacher's tokenizer (see `ember_data::tokenizer_hash`), if known.
    fn tokenizer_sha256(&self) -> Option<String>;
    /// `local`, `vllm`, `sglang`.
    fn source(&self) -> &'static str;
    /// Fingerprint of the weights (see `LogitsMeta::teacher_weights`); empty if unknown.
    fn weights_fingerprint(&self) -> Result<String, TeacherError> {
        Ok(String::new())
    }
    fn topk(&mut self, rows: &[&[i32]], k: usize, temperature: f32) -> Result<TopK, TeacherError>;
    /// Score token sequences (rows may differ in length, each at least 2 tokens): per
    /// position `i < len - 1`, the top-k of the distribution of token `i + 1` at temperature
    /// 1 and the log-probability of the row's own token `i + 1` (whether in the top-k or
    /// not). On-policy distillation scores the student's samples with it.
    fn score(&mut self, rows: &[&[i32]], k: usize) -> Result<Vec<ScoredRow>, TeacherError>;
}

/// Settings of one recording.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub data: PathBuf,
    pub split: Split,
    pub out: PathBuf,
    pub k: usize,
    pub temperature: f32,
    pub batch_size: usize,
    pub shard_rows: usize,
    /// Record only the first `max_rows` rows of the split.
    pub max_rows: Option<usize>,
    /// Encoding of the shards (`k` is then the largest number of entries per position).
    pub codec: LogitsCodec,
}

/// A local teacher on a device.
pub struct LocalTeacher {
    pub teacher: Teacher,
    pub dir: PathBuf,
    pub tokenizer_sha256: Option<String>,
    pub device: Device,
}

impl LogitSource for LocalTeacher {
    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }
    fn config_sha256(&self) -> String {
        self.teacher.config.sha256.clone()
    }
    fn vocab_size(&self) -> Option<usize> {
        Some(self.teacher.vocab_size())
    }
    fn tokenizer_sha256(&self) -> Option<String> {
        self.tokenizer_sha256.clone()
    }
    fn source(&self) -> &'static str {
        "local"
    }
    fn weights_fingerprint(&self) -> Result<String, TeacherError> {
        crate::weights::fingerprint(&self.dir)
    }
    fn score(&mut self, rows: &[&[i32]], k: usize) -> Result<Vec<ScoredRow>, TeacherError> {
        Ok(score_rows(&self.teacher, rows, k, &self.device))
    }
    fn topk(&mut self, rows: &[&[i32]], k: usize, temperature: f32) -> Result<TopK, TeacherError> {
        let (b, t) = (rows.len(), rows[0].len());
        let flat: Vec<i32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &self.device);
        let logits = self.teacher.forward(ids, None);
        Ok(topk_logprobs(logits, k, temperature))
    }
}

/// [`LogitSource::score`] for a teacher in this process: the rows are right-padded into
/// one batch (causal attention keeps padding out of every real position) and run at once.
pub fn score_rows(teacher: &Teacher, rows: &[&[i32]], k: usize, device: &Device) -> Vec<ScoredRow> {
    assert!(
        rows.iter().all(|r| r.len() >= 2),
        "a scored row needs two tokens"
    );
    let b = rows.len();
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0) - 1;
    let mut flat = Vec::with_capacity(b * t);
    let mut next = Vec::with_capacity(b * t);
    for r in rows {
        let n = r.len() - 1;
        flat.extend_from_slice(&r[..n]);
        flat.extend(std::iter::repeat_n(0, t - n));
        next.extend_from_slice(&r[1..]);
        next.extend(std::iter::repeat_n(0, t - n));
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), device);
    let logits = teacher.forward(ids, None).cast(burn::tensor::DType::F32);
    let next = Tensor::<3, Int>::from_data(TensorData::new(next, [b, t, 1]), device);
    let own: Vec<f32> = log_softmax(logits.clone(), 2)
        .gather(2, next)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float logprobs");
    topk_logprobs(logits, k, 1.0)
        .into_iter()
        .zip(rows)
        .enumerate()
        .map(|(i, ((mut ids, mut lps), row))| {
            let n = row.len() - 1;
            ids.truncate(n * k);
            lps.truncate(n * k);
            ScoredRow {
                topk_ids: ids,
                topk_logprobs: lps,
                token_logprobs: own[i * t..i * t + n].to_vec(),
            }
        })
        .collect()
}

/// Top-k of `log_softmax(logits / temperature)` over the full vocabulary, per position.
/// The normaliser is computed on the device; the selection runs on the host, one
/// sequence at a time, with a partial sort (O(V) per position, not a full sort).
pub fn topk_logprobs(logits: Tensor<3>, k: usize, temperature: f32) -> TopK {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.div_scalar(temperature), 2);
    (0..b)
        .map(|r| {
            let row: Vec<f32> = logp
                .clone()
                .slice([r..r + 1, 0..t, 0..v])
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("float logprobs");
            let mut ids = Vec::with_capacity(t * k);
            let mut lps = Vec::with_capacity(t * k);
            for pos in row.chunks_exact(v) {
                let top = ember_nn::topk_indices(pos, k);
                ids.extend(top.iter().map(|&i| i as i32));
                lps.extend(top.iter().map(|&i| pos[i]));
            }
            (ids, lps)
        })
        .collect()
}

/// Refuse teachers whose tokenizer or vocabulary cannot have produced the dataset's ids.
pub fn check_vocab(
    source: &dyn LogitSource,
    data: &DatasetManifest,
    data_dir: &Path,
) -> Result<Option<String>, TeacherError> {
    if let Some(sha) = source.tokenizer_sha256()
        && sha != data.tokenizer_sha256
    {
        return Err(TeacherError::Vocab(format!(
            "teacher {} uses tokenizer {} but dataset {} was tokenized with {}; re-run `ember data prepare` with the teacher's tokenizer.json",
            source.name(),
            &sha[..12],
            data_dir.display(),
            &data.tokenizer_sha256[..12]
        )));
    }
    let note = match source.vocab_size() {
        Some(v) if v < data.vocab_size => {
            return Err(TeacherError::Vocab(format!(
                "teacher {} has {v} output ids but the dataset's tokenizer has {}; they cannot share a vocabulary",
                source.name(),
                data.vocab_size
            )));
        }
        Some(v) if v > data.vocab_size => Some(format!(
            "teacher output layer has {v} ids, the tokenizer {}: ids {}..{v} are padding (probabilities kept, counted as tail by the trainer)",
            data.vocab_size, data.vocab_size
        )),
        _ => None,
    };
    if source.tokenizer_sha256().is_none() {
        eprintln!(
            "warning: teacher {} has no tokenizer.json to compare; assuming it is the dataset's ({} ids)",
            source.name(),
            data.vocab_size
        );
    }
    Ok(note)
}

/// Record `cfg.split` of `cfg.data` with `source` into `cfg.out`. Returns the manifest.
pub fn record(
    source: &mut dyn LogitSource,
    cfg: &RecordConfig,
) -> Result<LogitsManifest, TeacherError> {
    for (setting, positive) in [
        ("top-k", cfg.k > 0),
        ("batch size", cfg.batch_size > 0),
        ("shard rows", cfg.shard_rows > 0),
        (
            "temperature",
            cfg.temperature > 0.0 && cfg.temperature.is_finite(),
        ),
    ] {
        if !positive {
            return Err(TeacherError::Setting {
                setting,
                message: "must be positive (and finite)".into(),
            });
        }
    }
    if let LogitsCodec::Compact(c) = &cfg.codec {
        c.validate().map_err(|message| TeacherError::Setting {
            setting: "compact logits format",
            message,
        })?;
        if cfg.k > u16::MAX as usize {
            return Err(TeacherError::Setting {
                setting: "top-k",
                message: format!(
                    "{} exceeds the compact format's {} entries per position",
                    cfg.k,
                    u16::MAX
                ),
            });
        }
    }
    let data = TokenDataset::open(&cfg.data, cfg.split)?;
    let note = check_vocab(source, &data.manifest, &cfg.data)?;
    if let Some(note) = &note {
        eprintln!("note: {note}");
    }
    let vocab = source.vocab_size().unwrap_or(data.manifest.vocab_size);
    if cfg.k > vocab {
        return Err(TeacherError::Setting {
            setting: "top-k",
            message: format!("{} exceeds the vocabulary ({vocab})", cfg.k),
        });
    }
    let meta = LogitsMeta {
        teacher: source.name(),
        teacher_config_sha256: source.config_sha256(),
        tokenizer_sha256: data.manifest.tokenizer_sha256.clone(),
        vocab_size: vocab,
        k: cfg.k,
        temperature: cfg.temperature,
        seq_len: data.seq_len(),
        split: cfg.split,
        source: source.source().into(),
        teacher_weights: source.weights_fingerprint()?,
        codec: cfg.codec,
    };
    std::fs::create_dir_all(&cfg.out).map_err(|source| TeacherError::Io {
        path: cfg.out.clone(),
        source,
    })?;
    let rows = cfg.max_rows.unwrap_or(usize::MAX).min(data.len());
    let t = data.seq_len();
    let n_shards = rows.div_ceil(cfg.shard_rows);
    let bar = ProgressBar::new((rows * t) as u64).with_style(
        ProgressStyle::with_template("record [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} tokens ({per_sec}, eta {eta})")
            .expect("template"),
    );
    let start = Instant::now();
    let mut recorded = 0usize;
    let mut encoding = CodecStats::default();
    let mut encode_secs = 0.0;
    let mut shards = Vec::with_capacity(n_shards);
    for s in 0..n_shards {
        let first = s * cfg.shard_rows;
        let end = (first + cfg.shard_rows).min(rows);
        let file = format!("{}-{s:05}.arrow", cfg.split.name());
        let path = cfg.out.join(&file);
        if path.is_file() {
            let (existing, existing_rows) = read_logits_shard(&path)?;
            if existing != meta
                || existing_rows.len() != end - first
                || existing_rows.first().map(|r| r.row_index) != Some(first as u64)
            {
                if existing.teacher_weights != meta.teacher_weights
                    && (LogitsMeta {
                        teacher_weights: meta.teacher_weights.clone(),
                        ..existing.clone()
                    }) == meta
                {
                    return Err(TeacherError::ExistingOutput {
                        path: path.clone(),
                        message: format!(
                            "was recorded from other weights of teacher {} (fingerprint {} vs {} now: retrained or replaced in place?); use a new --out directory",
                            existing.teacher,
                            if existing.teacher_weights.is_empty() {
                                "unknown"
                            } else {
                                &existing.teacher_weights
                            },
                            meta.teacher_weights
                        ),
                    });
                }
                return Err(TeacherError::ExistingOutput {
                    path: path.clone(),
                    message: format!(
                        "was recorded with other settings ({} by {}, k={}, {:?}); use a new --out directory",
                        existing.source, existing.teacher, existing.k, existing.codec
                    ),
                });
            }
            bar.inc(((end - first) * t) as u64);
        } else {
            let mut out = Vec::with_capacity(end - first);
            for batch_start in (first..end).step_by(cfg.batch_size) {
                let batch_end = (batch_start + cfg.batch_size).min(end);
                let batch: Vec<&[i32]> = (batch_start..batch_end).map(|r| data.row(r)).collect();
                let topk = source.topk(&batch, cfg.k, cfg.temperature)?;
                for (r, (ids, logprobs)) in (batch_start..batch_end).zip(topk) {
                    // a NaN teacher must not become a dataset: refuse, naming the row
                    if let Some(i) = logprobs
                        .iter()
                        .position(|x| x.is_nan() || *x == f32::INFINITY)
                    {
                        return Err(TeacherError::NonFinite {
                            teacher: source.name(),
                            row: r,
                            position: i / cfg.k,
                            value: logprobs[i],
                        });
                    }
                    out.push(LogitsRow {
                        row_index: r as u64,
                        input_ids: data.row(r).to_vec(),
                        topk_ids: ids,
                        topk_logprobs: logprobs,
                    });
                }
                recorded += (batch_end - batch_start) * t;
                bar.inc(((batch_end - batch_start) * t) as u64);
            }
            let t0 = Instant::now();
            encoding.merge(&write_logits_shard(&path, &meta, &out)?);
            encode_secs += t0.elapsed().as_secs_f64();
        }
        shards.push(LogitsShard {
            file,
            first_row: first as u64,
            rows: end - first,
        });
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let manifest = LogitsManifest::from_shards(
        &cfg.out,
        meta,
        shards,
        serde_json::json!({
            "dataset": cfg.data,
            "recorded_positions_this_run": recorded,
            "seconds_this_run": secs,
            "tokens_per_second_this_run": recorded as f64 / secs.max(1e-9),
            "encode_write_seconds_this_run": encode_secs,
            "vocab_note": note,
            "codec_error_this_run": matches!(cfg.codec, LogitsCodec::Compact(_)).then(|| encoding.summary()),
        }),
    );
    manifest.save(&cfg.out)?;
    Ok(manifest)
}
