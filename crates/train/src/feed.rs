//! burn-train data loaders over Ember's batch sources.
//!
//! One burn-train epoch is a fixed number of optimizer steps ([`RunShape`]), so that
//! burn-train's per-epoch validation and checkpoints land on the steps the recipe asks
//! for. The training loader
//! walks the source's own epochs (a fresh permutation each) across those; its position
//! follows from the number of optimizer steps taken, which is how a resumed run continues
//! on exactly the rows it would have seen.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;
use ember_data::{LogitsRow, TokenDataset};

use burn_train::ItemLazy;
use ember_student::Student;

use crate::batches::{Source, online_targets, targets_from_rows};
use crate::distill::{KdEval, ValidTeacher};
use crate::learner::{TrainBatch, ValidBatch, ValidTeacherBatch, valid_step};
use crate::loss::dataset_batch;
use crate::monitor::RunShape;
use crate::{EvalReport, KdConfig, next_token_batch};

/// What the training loader needs to make micro-batches.
pub struct FeedConfig {
    pub batch_size: usize,
    /// Micro-batches per step, steps per burn-train epoch and in the run.
    pub shape: RunShape,
    pub student_vocab: usize,
    pub seed: u64,
    pub kd: KdConfig,
    /// Share of micro-batches that come from the on-policy pipeline (0 without one).
    pub onpolicy_share: f64,
}

/// The on-policy side of a feed.
pub struct OnPolicyFeed {
    pub pipeline: crate::onpolicy::Pipeline,
    pub objective: crate::Objective,
    /// Teacher entries per position.
    pub k: usize,
}

/// The training source and where in it the run is.
pub struct TrainFeed {
    source: Source,
    cfg: FeedConfig,
    /// Where the next micro-batch starts in the source's own epochs.
    pos: DataPos,
    /// Optimizer steps of the whole run completed (micro-batches handed out / grad_accum).
    steps_done: usize,
    /// Micro-batches handed out by this process (its optimizer steps index the
    /// gradient-norm record).
    micro: usize,
    /// Micro-batches of the run before this process started.
    first_micro: usize,
    onpolicy: Option<OnPolicyFeed>,
}

/// The source's own epoch, and rows of its permutation already used.
#[derive(Default)]
struct DataPos {
    epoch: usize,
    cursor: usize,
}

impl DataPos {
    /// Take the next `b` of `len` rows: the first row, and whether a new epoch began (the
    /// rest of an epoch shorter than a batch is skipped).
    fn take(&mut self, b: usize, len: usize) -> (usize, bool) {
        let new_epoch = self.cursor + b > len;
        if new_epoch {
            self.epoch += 1;
            self.cursor = 0;
        }
        self.cursor += b;
        (self.cursor - b, new_epoch)
    }
}

impl TrainFeed {
    /// The source positioned at the start of optimizer step `step`.
    pub fn new(
        mut source: Source,
        cfg: FeedConfig,
        step: usize,
        onpolicy: Option<OnPolicyFeed>,
    ) -> Self {
        let mut pos = DataPos::default();
        let first_micro = cfg.shape.micro_batches_before(step);
        for m in 0..first_micro {
            if !crate::onpolicy::is_onpolicy(cfg.onpolicy_share, cfg.seed, m) {
                pos.take(cfg.batch_size, source.len());
            }
        }
        source.start_epoch(cfg.seed, pos.epoch);
        Self {
            source,
            first_micro,
            cfg,
            pos,
            steps_done: step,
            micro: 0,
            onpolicy,
        }
    }

    fn next_batch(&mut self, device: &Device) -> Result<TrainBatch, crate::TrainError> {
        let m = self.first_micro + self.micro;
        if let Some(on) = &self.onpolicy
            && crate::onpolicy::is_onpolicy(self.cfg.onpolicy_share, self.cfg.seed, m)
        {
            let scored = on.pipeline.next(m)?;
            let kd = &self.cfg.kd;
            let x = crate::onpolicy::tensors(
                &scored,
                on.objective,
                on.k,
                self.cfg.student_vocab,
                kd.temperature,
                device,
            );
            return Ok(self.handed_out(TrainBatch {
                inputs: x.inputs,
                targets: x.targets,
                teacher: x.teacher,
                sampled: x.sampled,
                // on-policy batches: the distillation term alone (no CE on own samples)
                kd: KdConfig {
                    ce_weight: 0.0,
                    ..kd.clone()
                },
                grad_accum: self.cfg.shape.grad_accum,
                tokens: x.tokens,
                ends_step: None,
            }));
        }
        let b = self.cfg.batch_size;
        let (start, new_epoch) = self.pos.take(b, self.source.len());
        if new_epoch {
            self.source.start_epoch(self.cfg.seed, self.pos.epoch);
        }
        let batch = self.source.batch(
            start,
            b,
            self.cfg.student_vocab,
            self.cfg.kd.temperature,
            device,
        )?;
        let [rows, t] = batch.inputs.dims();
        Ok(self.handed_out(TrainBatch {
            inputs: batch.inputs,
            targets: batch.targets,
            teacher: batch.teacher,
            sampled: None,
            kd: self.cfg.kd.clone(),
            grad_accum: self.cfg.shape.grad_accum,
            tokens: rows * t,
            ends_step: None,
        }))
    }

    /// Count `batch` as handed out, marking the one that ends an optimizer step.
    fn handed_out(&mut self, mut batch: TrainBatch) -> TrainBatch {
        self.micro += 1;
        batch.ends_step = self.cfg.shape.ends_step(self.micro).then(|| {
            self.steps_done += 1;
            self.cfg.shape.steps_in(self.micro) - 1
        });
        batch
    }
}

/// Training micro-batches for burn-train: each `iter()` is one burn-train epoch.
#[derive(Clone)]
pub struct TrainLoader {
    pub feed: Arc<Mutex<TrainFeed>>,
    pub device: Device,
}

fn lock(feed: &Mutex<TrainFeed>) -> MutexGuard<'_, TrainFeed> {
    feed.lock().expect("training feed")
}

impl DataLoader<TrainBatch> for TrainLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<TrainBatch> + 'a> {
        let feed = lock(&self.feed);
        let total = feed.cfg.shape.micro_batches_after(feed.steps_done);
        drop(feed);
        Box::new(EpochIter {
            next: Box::new(|| {
                lock(&self.feed)
                    .next_batch(&self.device)
                    .map_err(DatasetError::new)
            }),
            done: 0,
            total,
            unit: "micro-batches",
        })
    }

    fn num_items(&self) -> usize {
        lock(&self.feed).cfg.shape.micro_batches_per_epoch()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<TrainBatch>> {
        Arc::new(Self {
            feed: self.feed.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<TrainBatch>> {
        // only burn-train's multi-device strategies split a loader
        panic!("Ember's training loader feeds a single device; it cannot be split")
    }
}

/// `total` items of one burn-train epoch, each made by `next` on demand.
struct EpochIter<'a, O> {
    next: Box<dyn FnMut() -> Result<O, DatasetError> + 'a>,
    done: usize,
    total: usize,
    unit: &'static str,
}

impl<O> Iterator for EpochIter<'_, O> {
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done == self.total {
            return None;
        }
        self.done += 1;
        Some((self.next)())
    }
}

impl<O> DataLoaderIterator<O> for EpochIter<'_, O> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some(self.unit.into()))
    }
}

/// The validation rows (and the teacher's view of them when distilling), batch by batch.
pub struct ValidSet {
    pub data: TokenDataset,
    pub teacher: Option<ValidTeacher>,
    pub batch_size: usize,
    pub student_vocab: usize,
}

impl ValidSet {
    /// Batches in the first `max_batches` (0 = all).
    pub fn batches(&self, max_batches: usize) -> usize {
        let n = self.data.len().div_ceil(self.batch_size);
        if max_batches == 0 {
            n
        } else {
            n.min(max_batches)
        }
    }

    /// Cross-entropy over the first `max_batches` batches (0 = all), and KL to the teacher
    /// and top-1 agreement when there is one; `student` on a plain (non-autodiff) device.
    pub fn evaluate(
        &self,
        student: &Student,
        max_batches: usize,
        device: &Device,
    ) -> (EvalReport, Option<KdEval>) {
        let (mut nll, mut tokens, mut sequences) = (0.0f64, 0u64, 0usize);
        let (mut kl, mut top1, mut positions) = (0.0f64, 0.0f64, 0u64);
        for i in 0..self.batches(max_batches) {
            let batch = self.batch(i, device);
            sequences += batch.inputs.dims()[0];
            let s = valid_step(student, batch)
                .sync()
                .expect("validation step on the device")
                .stats;
            nll += s.loss * s.tokens as f64;
            tokens += s.tokens as u64;
            if let (Some(k), Some((agree, n))) = (s.kl, s.top1) {
                kl += k * n as f64;
                top1 += agree * n as f64;
                positions += n as u64;
            }
        }
        let loss = nll / tokens.max(1) as f64;
        let report = EvalReport {
            loss,
            perplexity: loss.exp(),
            tokens,
            sequences,
        };
        let kd = self.teacher.as_ref().map(|_| {
            let p = positions.max(1) as f64;
            KdEval {
                kl: kl / p,
                top1_agreement: top1 / p,
                positions,
            }
        });
        (report, kd)
    }

    /// Batch `i`, in row order.
    pub fn batch(&self, i: usize, device: &Device) -> ValidBatch {
        let (start, end) = (
            i * self.batch_size,
            ((i + 1) * self.batch_size).min(self.data.len()),
        );
        let rows: Vec<usize> = (start..end).collect();
        let (inputs, targets, tokens) = dataset_batch(&self.data, &rows, device);
        let teacher = match &self.teacher {
            None => None,
            Some(ValidTeacher::Online(online)) => {
                let flat: Vec<i32> = rows
                    .iter()
                    .flat_map(|&r| self.data.row(r).iter().copied())
                    .collect();
                Some(ValidTeacherBatch {
                    inputs: None,
                    targets: targets.clone(),
                    teacher: online_targets(
                        online,
                        &flat,
                        self.data.seq_len(),
                        self.student_vocab,
                        1.0,
                        device,
                    ),
                })
            }
            Some(ValidTeacher::Offline(recorded)) => {
                let end = end.min(recorded.len());
                (start < end).then(|| {
                    let refs: Vec<&LogitsRow> = recorded[start..end].iter().collect();
                    let t = refs[0].input_ids.len();
                    let k = refs[0].topk_ids.len() / t;
                    let teacher = targets_from_rows(&refs, k, k, self.student_vocab, 1.0, device);
                    let same_rows = end - start == rows.len()
                        && refs
                            .iter()
                            .zip(&rows)
                            .all(|(r, &i)| r.input_ids.as_slice() == self.data.row(i));
                    if same_rows {
                        ValidTeacherBatch {
                            inputs: None,
                            targets: targets.clone(),
                            teacher,
                        }
                    } else {
                        let flat: Vec<i32> = refs
                            .iter()
                            .flat_map(|r| r.input_ids.iter().copied())
                            .collect();
                        let (x, y) = next_token_batch(&flat, t, device);
                        ValidTeacherBatch {
                            inputs: Some(x),
                            targets: y,
                            teacher,
                        }
                    }
                })
            }
        };
        ValidBatch {
            inputs,
            targets,
            tokens,
            teacher,
        }
    }
}

/// Validation batches for burn-train: the first `max_batches` of the set after each
/// burn-train epoch that ends on a multiple of `eval_every` (and before the last step,
/// which gets a full validation of its own); no batches after the others.
#[derive(Clone)]
pub struct ValidLoader {
    pub set: Arc<ValidSet>,
    pub feed: Arc<Mutex<TrainFeed>>,
    pub eval_every: usize,
    pub max_batches: usize,
    pub device: Device,
}

impl DataLoader<ValidBatch> for ValidLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ValidBatch> + 'a> {
        let feed = lock(&self.feed);
        let (step, max) = (feed.steps_done, feed.cfg.shape.max_steps);
        drop(feed);
        let due = self.eval_every > 0 && step % self.eval_every == 0 && step < max;
        let mut i = 0;
        Box::new(EpochIter {
            next: Box::new(move || {
                i += 1;
                Ok(self.set.batch(i - 1, &self.device))
            }),
            done: 0,
            total: if due {
                self.set.batches(self.max_batches)
            } else {
                0
            },
            unit: "batches",
        })
    }

    fn num_items(&self) -> usize {
        self.set.batches(self.max_batches)
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<ValidBatch>> {
        let mut moved = self.clone();
        moved.device = device.clone();
        Arc::new(moved)
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<ValidBatch>> {
        panic!("Ember's validation loader feeds a single device; it cannot be split")
    }
}
