//! Where training batches come from: packed token rows (cross-entropy), recorded teacher
//! logits (offline distillation, streamed shard by shard), or a teacher running in this
//! process (online distillation). Every source is deterministic for a (seed, epoch) and
//! resumable from (epoch, cursor).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use ember_data::{LogitsManifest, LogitsRow, TokenDataset, read_logits_shard};
use ember_teacher::{Teacher, topk_logprobs};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::loss::dataset_batch;
use crate::{TeacherTargets, TrainError, next_token_batch};

/// One micro-batch: `inputs`/`targets` `[b, T-1]`, and teacher targets when distilling.
pub struct Batch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub teacher: Option<TeacherTargets>,
}

/// A fresh permutation of `0..n` for `(seed, epoch, salt)`.
pub fn permutation(n: usize, seed: u64, epoch: usize, salt: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    let mix = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    perm.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix));
    perm
}

/// A teacher loaded next to the student.
pub struct OnlineTeacher {
    pub teacher: Teacher,
    /// Plain (non-autodiff) device: the teacher's forward builds no graph.
    pub device: Device,
    pub top_k: usize,
}

pub enum Source {
    Tokens {
        data: TokenDataset,
        perm: Vec<usize>,
    },
    Online {
        data: TokenDataset,
        perm: Vec<usize>,
        teacher: std::sync::Arc<OnlineTeacher>,
    },
    Offline(LogitsStream),
}

/// Recorded logits, one shard in memory at a time: each epoch visits the shards in a
/// shuffled order and the rows of each shard in a shuffled order.
pub struct LogitsStream {
    dir: PathBuf,
    pub manifest: LogitsManifest,
    /// Entries per position used for training: the first `keep_k` of the recorded k.
    pub keep_k: usize,
    /// The recorded dataset when it has labels (instruction data): targets come from its
    /// `labels` column (-100 on prompts and padding) by each row's `row_index`.
    pub labels: Option<TokenDataset>,
    order: Vec<(usize, usize)>,
    cache: Option<(usize, Vec<LogitsRow>)>,
}

impl LogitsStream {
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let manifest = LogitsManifest::load(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keep_k: manifest.meta.k,
            labels: None,
            manifest,
            order: Vec::new(),
            cache: None,
        })
    }

    pub fn rows(&self) -> usize {
        self.manifest.shards.iter().map(|s| s.rows).sum()
    }

    fn reorder(&mut self, seed: u64, epoch: usize) {
        self.order = permutation(self.manifest.shards.len(), seed, epoch, 1)
            .into_iter()
            .flat_map(|s| {
                permutation(self.manifest.shards[s].rows, seed, epoch, 2 + s as u64)
                    .into_iter()
                    .map(move |r| (s, r))
            })
            .collect();
    }

    fn row(&mut self, shard: usize, row: usize) -> Result<&LogitsRow, TrainError> {
        if self.cache.as_ref().map(|c| c.0) != Some(shard) {
            let (_, rows) = read_logits_shard(&self.dir.join(&self.manifest.shards[shard].file))?;
            self.cache = Some((shard, rows));
        }
        Ok(&self.cache.as_ref().expect("just loaded").1[row])
    }

    /// All rows of the stream in stored order (for validation sets).
    pub fn all_rows(&self) -> Result<Vec<LogitsRow>, TrainError> {
        let mut out = Vec::new();
        for s in &self.manifest.shards {
            out.extend(read_logits_shard(&self.dir.join(&s.file))?.1);
        }
        Ok(out)
    }
}

/// Teacher targets from recorded rows of `recorded_k` entries per position, keeping the
/// first (most likely) `k <= recorded_k` of each position.
pub fn targets_from_rows(
    rows: &[&LogitsRow],
    recorded_k: usize,
    k: usize,
    student_vocab: usize,
    temperature: f64,
    device: &Device,
) -> TeacherTargets {
    let t = rows[0].input_ids.len() - 1;
    let ids: Vec<i32> = rows
        .iter()
        .flat_map(|r| first_k(&r.topk_ids, t, recorded_k, k))
        .collect();
    let lps: Vec<f32> = rows
        .iter()
        .flat_map(|r| first_k(&r.topk_logprobs, t, recorded_k, k))
        .collect();
    TeacherTargets::new(
        &ids,
        &lps,
        rows.len(),
        t,
        k,
        student_vocab,
        temperature,
        device,
    )
}

/// The first `k` of each position's `recorded_k` entries, positions `0..t`.
fn first_k<T: Copy>(
    v: &[T],
    t: usize,
    recorded_k: usize,
    k: usize,
) -> impl Iterator<Item = T> + '_ {
    (0..t).flat_map(move |p| v[p * recorded_k..p * recorded_k + k].iter().copied())
}

/// Run the online teacher on token rows and keep its top-k (temperature 1; the loss re-tempers).
pub fn online_targets(
    teacher: &OnlineTeacher,
    rows: &[i32],
    seq_len: usize,
    student_vocab: usize,
    temperature: f64,
    device: &Device,
) -> TeacherTargets {
    let b = rows.len() / seq_len;
    let t = seq_len - 1;
    let inputs: Vec<i32> = rows
        .chunks(seq_len)
        .flat_map(|r| r[..t].iter().copied())
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(inputs, [b, t]), &teacher.device);
    // logits are dropped as soon as the top-k is on the host
    let topk = topk_logprobs(
        teacher.teacher.forward(ids, None).cast(DType::F32),
        teacher.top_k,
        1.0,
    );
    let flat_ids: Vec<i32> = topk.iter().flat_map(|r| r.0.iter().copied()).collect();
    let flat_lp: Vec<f32> = topk.iter().flat_map(|r| r.1.iter().copied()).collect();
    TeacherTargets::new(
        &flat_ids,
        &flat_lp,
        b,
        t,
        teacher.top_k,
        student_vocab,
        temperature,
        device,
    )
}

impl Source {
    /// Rows per epoch.
    pub fn len(&self) -> usize {
        match self {
            Source::Tokens { data, .. } | Source::Online { data, .. } => data.len(),
            Source::Offline(s) => s.rows(),
        }
    }

    /// Set up the order of `epoch`.
    pub fn start_epoch(&mut self, seed: u64, epoch: usize) {
        match self {
            Source::Tokens { data, perm } | Source::Online { data, perm, .. } => {
                *perm = permutation(data.len(), seed, epoch, 0)
            }
            Source::Offline(s) => s.reorder(seed, epoch),
        }
    }

    /// Rows `cursor..cursor + b` of the current epoch as a batch on `device`.
    pub fn batch(
        &mut self,
        cursor: usize,
        b: usize,
        student_vocab: usize,
        temperature: f64,
        device: &Device,
    ) -> Result<Batch, TrainError> {
        match self {
            Source::Tokens { data, perm } => {
                let (inputs, targets, _) = dataset_batch(data, &perm[cursor..cursor + b], device);
                Ok(Batch {
                    inputs,
                    targets,
                    teacher: None,
                })
            }
            Source::Online {
                data,
                perm,
                teacher,
            } => {
                let rows: Vec<i32> = perm[cursor..cursor + b]
                    .iter()
                    .flat_map(|&r| data.row(r).iter().copied())
                    .collect();
                let (inputs, targets, _) = dataset_batch(data, &perm[cursor..cursor + b], device);
                let teacher = online_targets(
                    teacher,
                    &rows,
                    data.seq_len(),
                    student_vocab,
                    temperature,
                    device,
                );
                Ok(Batch {
                    inputs,
                    targets,
                    teacher: Some(teacher),
                })
            }
            Source::Offline(stream) => {
                let picks: Vec<(usize, usize)> = stream.order[cursor..cursor + b].to_vec();
                let mut rows = Vec::with_capacity(b);
                for (s, r) in picks {
                    rows.push(stream.row(s, r)?.clone());
                }
                let t = rows[0].input_ids.len();
                let flat: Vec<i32> = rows
                    .iter()
                    .flat_map(|r| r.input_ids.iter().copied())
                    .collect();
                let (inputs, mut targets) = next_token_batch(&flat, t, device);
                if let Some(data) = &stream.labels {
                    let mut labels = Vec::with_capacity(rows.len() * (t - 1));
                    for r in &rows {
                        let i = r.row_index as usize;
                        if i >= data.len() || data.row(i) != r.input_ids.as_slice() {
                            return Err(TrainError::Config {
                                path: stream.dir.clone(),
                                message: format!(
                                    "logits row {i} does not hold the tokens of row {i} of dataset {}: record the logits on this dataset",
                                    data.dir.display()
                                ),
                            });
                        }
                        labels.extend_from_slice(&data.labels(i).expect("labels")[1..]);
                    }
                    targets =
                        Tensor::from_data(TensorData::new(labels, [rows.len(), t - 1]), device);
                }
                let refs: Vec<&LogitsRow> = rows.iter().collect();
                let teacher = targets_from_rows(
                    &refs,
                    stream.manifest.meta.k,
                    stream.keep_k,
                    student_vocab,
                    temperature,
                    device,
                );
                Ok(Batch {
                    inputs,
                    targets,
                    teacher: Some(teacher),
                })
            }
        }
    }
}
