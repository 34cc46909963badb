//! On-policy distillation: the student samples completions of prompts, the teacher
//! scores every sampled token, and the student is trained on its own samples.
//!
//! Three stages run at once, joined by bounded queues:
//!
//! 1. **sampling** (a thread): the student of some earlier step samples a micro-batch of
//!    prompts (batched, KV cache, temperature/top-k/top-p, stop at EOS);
//! 2. **scoring** (a thread): the teacher, in this process or behind a serving engine,
//!    gives every position's top-k and the log-probability of the sampled token;
//! 3. **training** (burn-train's loop): the scored micro-batch becomes a training batch
//!    whose loss covers the generated tokens only.
//!
//! The batch of optimizer step `s` is sampled with the weights after step
//! `v = max(s - max_staleness, first step of this process)`, which the trainer publishes
//! after each update ([`Policy`]), so sampling the next batches overlaps the current
//! step while the policy never lags more than `max_staleness` steps. Everything else
//! that decides a batch (which micro-batches are on-policy, which prompts, each row's
//! random generator) follows from `(seed, micro-batch index)`, so a run is
//! deterministic, and a resumed run refills its queue from the checkpoint's step; with
//! `max_staleness = 0` it continues exactly as the uninterrupted run would have (with a
//! larger bound the first batches after a resume are sampled by the checkpoint's
//! weights, which only makes them fresher). Each micro-batch carries its index and the
//! trainer checks it, so no batch is scored twice into one step.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use burn::prelude::*;
use ember_data::TokenDataset;
use ember_student::{GenerateConfig, Sample, Student, sample_batch};
use ember_teacher::{RemoteTeacher, ScoredRow, score_rows};
use serde::Serialize;

use crate::TrainError;
use crate::batches::{OnlineTeacher, permutation};
use crate::config::Objective;
use crate::kd::{SampledTargets, TeacherTargets};

/// The trainer's weights after each optimizer step, for the sampler: the newest
/// `keep` versions (version = optimizer steps taken).
pub struct Policy {
    state: Mutex<PolicyState>,
    cond: Condvar,
    keep: usize,
}

struct PolicyState {
    versions: VecDeque<(usize, Student)>,
    closed: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("keep", &self.keep).finish()
    }
}

impl Policy {
    pub fn new(keep: usize) -> Self {
        Self {
            state: Mutex::new(PolicyState {
                versions: VecDeque::new(),
                closed: false,
            }),
            cond: Condvar::new(),
            keep: keep.max(1),
        }
    }

    /// The student after `version` optimizer steps (on a plain, non-autodiff device).
    pub fn publish(&self, version: usize, student: Student) {
        let mut s = self.state.lock().expect("policy");
        s.versions.push_back((version, student));
        while s.versions.len() > self.keep {
            s.versions.pop_front();
        }
        self.cond.notify_all();
    }

    /// Wait for `version`; `None` once the run is over.
    fn get(&self, version: usize) -> Option<Student> {
        let mut s = self.state.lock().expect("policy");
        loop {
            if s.closed {
                return None;
            }
            if let Some((_, m)) = s.versions.iter().find(|(v, _)| *v == version) {
                return Some(m.clone());
            }
            let newest = s.versions.back().map(|v| v.0);
            assert!(
                newest.is_none_or(|n| n < version),
                "policy version {version} was dropped before it was sampled (newest {newest:?})"
            );
            s = self.cond.wait(s).expect("policy");
        }
    }

    /// Wake and stop the sampler.
    pub fn close(&self) {
        self.state.lock().expect("policy").closed = true;
        self.cond.notify_all();
    }
}

/// Whether micro-batch `micro` of the run is on-policy, for a share `lambda` of them:
/// a hash of `(seed, micro)`, so the choice survives a resume.
pub fn is_onpolicy(lambda: f64, seed: u64, micro: usize) -> bool {
    if lambda >= 1.0 {
        return true;
    }
    if lambda <= 0.0 {
        return false;
    }
    let u =
        splitmix(seed ^ 0x5EED_0F_0B01_1C1E ^ (micro as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    ((u >> 11) as f64 / (1u64 << 53) as f64) < lambda
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The prompts of a prepared dataset: instruction rows (with labels) cut before their
/// first labelled token, the answer then being the student's to write; corpus rows cut to
/// their first `prompt_tokens` tokens.
pub fn prompts_of(data: &TokenDataset, prompt_tokens: usize) -> Result<Vec<Vec<u32>>, TrainError> {
    let mut out = Vec::with_capacity(data.len());
    for i in 0..data.len() {
        let row = data.row(i);
        let cut = match data.labels(i) {
            Some(labels) => match labels.iter().position(|&l| l >= 0) {
                Some(p) if p > 0 => p,
                _ => continue,
            },
            None => prompt_tokens.min(row.len()),
        };
        out.push(row[..cut].iter().map(|&t| t as u32).collect());
    }
    if out.is_empty() {
        return Err(TrainError::Config {
            path: data.dir.clone(),
            message: if data.labels(0).is_some() {
                "no row has a prompt followed by an answer to sample in its place".into()
            } else {
                format!("onpolicy.prompt_tokens = {prompt_tokens} leaves no prompt")
            },
        });
    }
    Ok(out)
}

/// Who scores the samples.
pub enum Scorer {
    Local(Arc<OnlineTeacher>),
    Remote {
        teacher: RemoteTeacher,
        /// Rows scored at once (one request each).
        concurrency: usize,
    },
}

impl Scorer {
    fn score(&self, rows: &[Vec<i32>], k: usize) -> Result<Vec<ScoredRow>, TrainError> {
        match self {
            Scorer::Local(t) => {
                let refs: Vec<&[i32]> = rows.iter().map(Vec::as_slice).collect();
                Ok(score_rows(&t.teacher, &refs, k, &t.device))
            }
            Scorer::Remote {
                teacher,
                concurrency,
            } => {
                let mut out: Vec<Option<Result<ScoredRow, TrainError>>> =
                    (0..rows.len()).map(|_| None).collect();
                let n = (*concurrency).min(rows.len()).max(1);
                std::thread::scope(|s| {
                    let handles: Vec<_> = (0..n)
                        .map(|w| {
                            s.spawn(move || {
                                (w..rows.len())
                                    .step_by(n)
                                    .map(|i| {
                                        (
                                            i,
                                            teacher
                                                .score_row(&rows[i], k)
                                                .map_err(TrainError::from),
                                        )
                                    })
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    for h in handles {
                        for (i, r) in h.join().expect("scoring thread") {
                            out[i] = Some(r);
                        }
                    }
                });
                out.into_iter()
                    .map(|r| r.expect("every row scored"))
                    .collect()
            }
        }
    }
}

/// What fixes the on-policy batches of a run.
#[derive(Clone)]
pub struct Plan {
    pub seed: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lambda: f64,
    /// Optimizer steps done before this process (resume).
    pub first_step: usize,
    pub max_steps: usize,
    pub max_staleness: usize,
    pub queue: usize,
    pub generate: GenerateConfig,
    /// Teacher entries per position.
    pub k: usize,
    /// Ids the student may sample: the dataset tokenizer's (a padded student vocabulary's
    /// extra ids mean nothing to the teacher).
    pub vocab: usize,
}

/// One sampled micro-batch.
struct Sampled {
    micro: usize,
    version: usize,
    prompts: Vec<Vec<u32>>,
    samples: Vec<Sample>,
    sample_seconds: f64,
}

/// A sampled micro-batch with the teacher's scores.
pub struct Scored {
    pub micro: usize,
    /// Optimizer steps taken by the weights that sampled it.
    pub version: usize,
    pub prompts: Vec<Vec<u32>>,
    pub samples: Vec<Sample>,
    pub scores: Vec<ScoredRow>,
    pub sample_seconds: f64,
    pub score_seconds: f64,
}

/// Throughput of each stage, shared by the threads, the trainer and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OnPolicyStats {
    /// On-policy micro-batches trained on so far by this process.
    pub batches: usize,
    pub generated_tokens: u64,
    /// Rows that ended with the EOS token (the rest reached max_new_tokens).
    pub rows_stopped: u64,
    pub rows: u64,
    /// Busy time of the sampler and of the teacher, and the trainer's waits for a batch.
    pub sample_seconds: f64,
    pub score_seconds: f64,
    pub wait_seconds: f64,
    /// Sequence tokens (prompt + generated) the teacher scored.
    pub scored_tokens: u64,
    pub max_staleness_seen: usize,
    pub last_staleness: usize,
    #[serde(skip)]
    pub started: Option<Instant>,
    /// What the run trained before this process (from `onpolicy.jsonl`), and the positions
    /// of one offline micro-batch, for [`OnPolicyStats::trained_positions`].
    #[serde(skip)]
    pub earlier: (usize, u64),
    #[serde(skip)]
    pub offline_positions: u64,
    #[serde(skip)]
    pub grad_accum: usize,
}

impl OnPolicyStats {
    /// Positions with a loss trained by the end of optimizer step `step` (generated tokens
    /// of on-policy micro-batches, whole rows of offline ones), assuming the batches up to
    /// there were handed out.
    pub fn trained_positions(&self, step: usize) -> u64 {
        let on = self.earlier.0 + self.batches;
        let offline = (step * self.grad_accum).saturating_sub(on) as u64;
        self.earlier.1 + self.generated_tokens + offline * self.offline_positions
    }

    pub fn sample_tokens_per_second(&self) -> f64 {
        self.generated_tokens as f64 / self.sample_seconds.max(1e-9)
    }
    pub fn score_tokens_per_second(&self) -> f64 {
        self.scored_tokens as f64 / self.score_seconds.max(1e-9)
    }
    /// Generated tokens trained on per second of this process's wall time.
    pub fn loop_tokens_per_second(&self) -> f64 {
        let secs = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.generated_tokens as f64 / secs.max(1e-9)
    }
    /// One line for the progress display.
    pub fn line(&self) -> String {
        format!(
            "sample {:.0} tok/s | teacher {:.0} tok/s | loop {:.0} gen tok/s | staleness {} | waited {:.1} s",
            self.sample_tokens_per_second(),
            self.score_tokens_per_second(),
            self.loop_tokens_per_second(),
            self.last_staleness,
            self.wait_seconds
        )
    }
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serializes");
        v["sample_tokens_per_second"] = self.sample_tokens_per_second().into();
        v["score_tokens_per_second"] = self.score_tokens_per_second().into();
        v["loop_generated_tokens_per_second"] = self.loop_tokens_per_second().into();
        v
    }
}

/// The sampling and scoring threads of a run, and the queue of scored micro-batches.
pub struct Pipeline {
    rx: Receiver<Result<Scored, TrainError>>,
    pub policy: Arc<Policy>,
    pub stats: Arc<Mutex<OnPolicyStats>>,
    plan: Plan,
    log: PathBuf,
}

impl Pipeline {
    /// Start sampling at the first micro-batch of step `plan.first_step`. The policy must
    /// receive version `plan.first_step` (the weights the run starts from) before the
    /// first batch can be sampled.
    /// `offline_positions`: positions with a loss of one offline micro-batch.
    pub fn start(
        plan: Plan,
        prompts: Vec<Vec<u32>>,
        scorer: Scorer,
        device: Device,
        log: PathBuf,
        offline_positions: u64,
    ) -> Self {
        let policy = Arc::new(Policy::new(plan.max_staleness + 1));
        // batches logged by the process(es) before this one (the log is cut to the checkpoint)
        let earlier = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .fold((0usize, 0u64), |(n, g), v| {
                (n + 1, g + v["generated_tokens"].as_u64().unwrap_or(0))
            });
        let stats = Arc::new(Mutex::new(OnPolicyStats {
            started: Some(Instant::now()),
            earlier,
            offline_positions,
            grad_accum: plan.grad_accum,
            ..OnPolicyStats::default()
        }));
        let (sampled_tx, sampled_rx) = sync_channel::<Result<Sampled, TrainError>>(plan.queue);
        let (scored_tx, scored_rx) = sync_channel(plan.queue);
        {
            let (plan, policy) = (plan.clone(), policy.clone());
            std::thread::Builder::new()
                .name("onpolicy-sampler".into())
                .spawn(move || sampler(plan, prompts, policy, device, sampled_tx))
                .expect("spawn the sampler");
        }
        {
            let k = plan.k;
            std::thread::Builder::new()
                .name("onpolicy-teacher".into())
                .spawn(move || scorer_loop(scorer, k, sampled_rx, scored_tx))
                .expect("spawn the scorer");
        }
        Self {
            rx: scored_rx,
            policy,
            stats,
            plan,
            log,
        }
    }

    /// The scored micro-batch `micro` (the next on-policy one), waiting for it if needed.
    pub fn next(&self, micro: usize) -> Result<Scored, TrainError> {
        let waited = Instant::now();
        let scored = self.rx.recv().map_err(|_| TrainError::Training {
            path: self.log.clone(),
            message: "the on-policy sampler stopped".into(),
        })??;
        let wait = waited.elapsed().as_secs_f64();
        assert_eq!(
            scored.micro, micro,
            "on-policy batches out of order: got micro-batch {} for {micro}",
            scored.micro
        );
        let step = micro / self.plan.grad_accum;
        let staleness = step - scored.version;
        let generated: u64 = scored.samples.iter().map(|s| s.tokens.len() as u64).sum();
        let stopped = scored
            .samples
            .iter()
            .filter(|s| s.tokens.last().copied() == self.plan.generate.stop_token)
            .count() as u64;
        let scored_tokens: u64 = scored
            .prompts
            .iter()
            .zip(&scored.samples)
            .map(|(p, s)| (p.len() + s.tokens.len()) as u64)
            .sum();
        let mut st = self.stats.lock().expect("on-policy stats");
        st.batches += 1;
        st.generated_tokens += generated;
        st.rows += scored.samples.len() as u64;
        st.rows_stopped += stopped;
        st.sample_seconds += scored.sample_seconds;
        st.score_seconds += scored.score_seconds;
        st.wait_seconds += wait;
        st.scored_tokens += scored_tokens;
        st.last_staleness = staleness;
        st.max_staleness_seen = st.max_staleness_seen.max(staleness);
        drop(st);
        let row = serde_json::json!({
            "step": step + 1, "micro_batch": micro, "policy_step": scored.version,
            "staleness": staleness, "rows": scored.samples.len(),
            "generated_tokens": generated, "scored_tokens": scored_tokens, "stopped_at_eos": stopped,
            "sample_seconds": scored.sample_seconds,
            "sample_tokens_per_second": generated as f64 / scored.sample_seconds.max(1e-9),
            "score_seconds": scored.score_seconds,
            "score_tokens_per_second": scored_tokens as f64 / scored.score_seconds.max(1e-9),
            "wait_seconds": wait,
        });
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| writeln!(f, "{row}"))
            .map_err(|source| TrainError::Io {
                path: self.log.clone(),
                source,
            })?;
        Ok(scored)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.policy.close();
    }
}

/// The sampler thread: every on-policy micro-batch of the run from `plan.first_step` on.
fn sampler(
    plan: Plan,
    prompts: Vec<Vec<u32>>,
    policy: Arc<Policy>,
    device: Device,
    tx: SyncSender<Result<Sampled, TrainError>>,
) {
    let b = plan.batch_size;
    let on = |m: usize| is_onpolicy(plan.lambda, plan.seed, m);
    let first = plan.first_step * plan.grad_accum;
    // where the prompt order stands after the on-policy micro-batches already trained
    let (mut epoch, mut cursor) = (0usize, 0usize);
    let mut take = || {
        if cursor + b > prompts.len() {
            epoch += 1;
            cursor = 0;
        }
        cursor += b;
        (epoch, cursor - b)
    };
    for _ in (0..first).filter(|&m| on(m)) {
        take();
    }
    let mut perm_epoch = usize::MAX;
    let mut perm = Vec::new();
    for m in (first..plan.max_steps * plan.grad_accum).filter(|&m| on(m)) {
        let step = m / plan.grad_accum;
        let version = step.saturating_sub(plan.max_staleness).max(plan.first_step);
        let Some(student) = policy.get(version) else {
            return;
        };
        let (e, c) = take();
        if e != perm_epoch {
            perm = permutation(prompts.len(), plan.seed, e, 7);
            perm_epoch = e;
        }
        let batch: Vec<Vec<u32>> = perm[c..c + b].iter().map(|&i| prompts[i].clone()).collect();
        let seeds: Vec<u64> = (0..b)
            .map(|r| {
                splitmix(
                    plan.seed ^ splitmix(m as u64) ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
                )
            })
            .collect();
        let started = Instant::now();
        // a panic in the student's forward reaches the trainer as an error, not as silence
        let sampled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sample_batch(
                &student,
                &batch,
                &seeds,
                &plan.generate,
                plan.vocab,
                &device,
            )
        }));
        let samples = match sampled {
            Ok(s) => s,
            Err(panic) => {
                let _ = tx.send(Err(TrainError::Training {
                    path: PathBuf::from("[onpolicy]"),
                    message: format!("sampling micro-batch {m} failed: {}", panic_text(&*panic)),
                }));
                return;
            }
        };
        let item = Sampled {
            micro: m,
            version,
            prompts: batch,
            samples,
            sample_seconds: started.elapsed().as_secs_f64(),
        };
        if tx.send(Ok(item)).is_err() {
            return;
        }
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The teacher thread: score each sampled micro-batch in order.
fn scorer_loop(
    scorer: Scorer,
    k: usize,
    rx: Receiver<Result<Sampled, TrainError>>,
    tx: SyncSender<Result<Scored, TrainError>>,
) {
    for item in rx {
        let out = item.and_then(|s| {
            let rows: Vec<Vec<i32>> = s
                .prompts
                .iter()
                .zip(&s.samples)
                .map(|(p, x)| p.iter().chain(&x.tokens).map(|&t| t as i32).collect())
                .collect();
            let started = Instant::now();
            let scores =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scorer.score(&rows, k)))
                    .map_err(|panic| TrainError::Training {
                        path: PathBuf::from("[teacher]"),
                        message: format!(
                            "scoring micro-batch {} failed: {}",
                            s.micro,
                            panic_text(&*panic)
                        ),
                    })??;
            Ok(Scored {
                micro: s.micro,
                version: s.version,
                prompts: s.prompts,
                samples: s.samples,
                scores,
                sample_seconds: s.sample_seconds,
                score_seconds: started.elapsed().as_secs_f64(),
            })
        });
        let failed = out.is_err();
        if tx.send(out).is_err() || failed {
            return;
        }
    }
}

/// A scored micro-batch as training tensors: prompt + sample per row, right-padded;
/// targets are the sampled tokens (-100 on the prompt and the padding); the teacher's
/// top-k ([`Objective::Distribution`]) or the sampled-token log-probabilities
/// ([`Objective::SampledKl`]).
pub struct OnPolicyTensors {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub teacher: Option<TeacherTargets>,
    pub sampled: Option<SampledTargets>,
    /// Generated positions (those with a loss).
    pub tokens: usize,
}

pub fn tensors(
    s: &Scored,
    objective: Objective,
    k: usize,
    student_vocab: usize,
    temperature: f64,
    device: &Device,
) -> OnPolicyTensors {
    let b = s.prompts.len();
    let lens: Vec<usize> = s
        .prompts
        .iter()
        .zip(&s.samples)
        .map(|(p, x)| p.len() + x.tokens.len())
        .collect();
    let t = lens.iter().copied().max().unwrap_or(2) - 1;
    let mut inputs = vec![0i32; b * t];
    let mut targets = vec![-100i32; b * t];
    let mut tlp = vec![0f32; b * t];
    let mut slp = vec![0f32; b * t];
    let mut top1 = vec![-1i32; b * t];
    let mut ids = vec![0i32; b * t * k];
    let mut lps = vec![-30f32; b * t * k];
    let mut tokens = 0;
    for r in 0..b {
        let (p, x, sc) = (&s.prompts[r], &s.samples[r], &s.scores[r]);
        let full: Vec<i32> = p.iter().chain(&x.tokens).map(|&v| v as i32).collect();
        let n = full.len() - 1;
        inputs[r * t..r * t + n].copy_from_slice(&full[..n]);
        for i in 0..n {
            let at = r * t + i;
            ids[at * k..at * k + k].copy_from_slice(&sc.topk_ids[i * k..i * k + k]);
            lps[at * k..at * k + k].copy_from_slice(&sc.topk_logprobs[i * k..i * k + k]);
            if i + 1 >= p.len() {
                targets[at] = full[i + 1];
                tlp[at] = sc.token_logprobs[i];
                slp[at] = x.logprobs[i + 1 - p.len()];
                top1[at] = sc.topk_ids[i * k];
                tokens += 1;
            }
        }
    }
    let (teacher, sampled) = match objective {
        Objective::Distribution => (
            Some(TeacherTargets::new(
                &ids,
                &lps,
                b,
                t,
                k,
                student_vocab,
                temperature,
                device,
            )),
            None,
        ),
        Objective::SampledKl => (
            None,
            Some(SampledTargets::new(tlp, slp, top1, b, t, device)),
        ),
    };
    OnPolicyTensors {
        inputs: Tensor::from_data(TensorData::new(inputs, [b, t]), device),
        targets: Tensor::from_data(TensorData::new(targets, [b, t]), device),
        teacher,
        sampled,
        tokens,
    }
}
