//! Distillation losses on top-k teacher distributions, with the tail handled explicitly.
//!
//! The teacher gives, per position, `k` token ids with log-probabilities normalised over
//! its full vocabulary; the mass it puts elsewhere is the *tail*, `1 - sum(p_topk)`.
//! Each loss compares the two distributions over `k + 1` outcomes: the teacher's top-k
//! tokens and "any other token". The student's tail probability is `1 - sum(q_topk)`
//! from its full softmax, so mass the student spends outside the teacher's top-k is
//! penalised, not silently dropped.
//!
//! Temperature `T` softens both sides: the student exactly (`softmax(z / T)` over its
//! vocabulary); the teacher by re-normalising `p^(1/T)` over the `k + 1` outcomes, which
//! is exact for the top-k ratios and treats the tail as one outcome (exact when `T`
//! equals the recording temperature). KD terms are multiplied by `T^2` (Hinton et al.)
//! so gradients keep their scale across temperatures.
//!
//! Teacher distributions are never densified. Two implementations give the same values
//! and gradients (pinned against each other and against PyTorch in tests/it/kd.rs):
//!
//! - [`kd_loss`] (evaluation, and anyone holding logits): plain tensor ops with a
//!   log-sum-exp in chunks of the vocabulary, so no `[B, T, V]` copy beyond the logits.
//! - [`loss_from_hidden`] (training): the loss depends on the logits only through the
//!   student's log-probabilities of the teacher's `k` tokens (and, for the uniform tail,
//!   their sum over the vocabulary), so autodiff runs on those `[B, T, k]` tensors alone and
//!   the gradient with respect to the logits is assembled in closed form,
//!   `dL/dz = (scatter(g) - q * sum(g)) / T` plus the cross-entropy term
//!   `(q - onehot(y)) / n` (Liger-Kernel's approach), chunk by chunk of positions, and
//!   pushed through the output projection at once. The logits are never tracked and never
//!   exist whole.

use burn::prelude::*;
use burn::tensor::{DType, IndexingUpdateOp};
use serde::{Deserialize, Serialize};

use crate::loss::position_mask;

/// Which divergence between teacher `P` and student `Q`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KdLoss {
    /// KL(P || Q): mean-seeking (Hinton; torchtune's KD recipe).
    ForwardKl,
    /// KL(Q || P): mode-seeking (MiniLLM).
    ReverseKl,
    /// Generalised Jensen-Shannon: `beta KL(P||M) + (1-beta) KL(Q||M)`, `M = beta P + (1-beta) Q` (TRL GKD).
    Jsd { beta: f64 },
    /// Skew KL: KL(P || alpha P + (1-alpha) Q) (DistiLLM).
    SkewKl { alpha: f64 },
    /// Total variation distance: `0.5 sum |P - Q|`.
    Tvd,
}

/// What the teacher's tail (mass outside its top-k) asks of the student.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TailMode {
    /// The tail is one outcome: the student must put the same total mass outside the top-k,
    /// but how it spreads that mass is free.
    #[default]
    Bucket,
    /// The tail mass is spread uniformly over the other tokens of the vocabulary (forward KL
    /// only), so the student is also asked not to pile it onto a few wrong tokens.
    Uniform,
}

/// Distillation objective settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdConfig {
    pub loss: KdLoss,
    pub temperature: f64,
    /// Weight of cross-entropy on the hard labels: `total = ce_weight * CE + (1 - ce_weight) * KD`.
    pub ce_weight: f64,
    /// Vocabulary chunk of the student's log-sum-exp.
    pub vocab_chunk: usize,
    /// Treatment of the teacher's tail.
    pub tail: TailMode,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
            ce_weight: 0.0,
            vocab_chunk: 32768,
            tail: TailMode::Bucket,
        }
    }
}

/// Teacher targets for a batch, built on the host.
pub struct TeacherTargets {
    /// `[b, t, k]` token ids (entries outside the student vocabulary point at id 0 with p = 0).
    pub ids: Tensor<3, Int>,
    /// `[b, t, k]` probabilities at the training temperature.
    pub probs: Tensor<3>,
    /// `[b, t, 1]` tail probability at the training temperature.
    pub tail: Tensor<3>,
    /// `[b, t, k]` 1 for real entries, 0 for slots freed by padding ids.
    pub valid: Tensor<3>,
    /// Teacher's most likely token per position (for top-1 agreement), `[b * t]`.
    pub top1: Vec<i32>,
}

impl TeacherTargets {
    /// From recorded log-probabilities (`b * t * k`, most likely first). Ids at or above
    /// `student_vocab` (padding of a larger teacher vocabulary) join the tail.
    pub fn new(
        ids: &[i32],
        logprobs: &[f32],
        b: usize,
        t: usize,
        k: usize,
        student_vocab: usize,
        temperature: f64,
        device: &Device,
    ) -> Self {
        let mut out_ids = Vec::with_capacity(b * t * k);
        let mut probs = Vec::with_capacity(b * t * k);
        let mut tails = Vec::with_capacity(b * t);
        let mut valid = Vec::with_capacity(b * t * k);
        let mut top1 = Vec::with_capacity(b * t);
        for (pos_ids, pos_lp) in ids.chunks_exact(k).zip(logprobs.chunks_exact(k)) {
            top1.push(pos_ids[0]);
            let mass: f64 = pos_lp.iter().map(|&l| (l as f64).exp()).sum();
            let tail = (1.0 - mass).max(0.0);
            // tempered, unnormalised: p^(1/T) for kept tokens and the tail
            let inv_t = 1.0 / temperature;
            let mut kept: Vec<(i32, f64)> = Vec::with_capacity(k);
            let mut tail_t = if tail > 0.0 { tail.powf(inv_t) } else { 0.0 };
            for (&id, &lp) in pos_ids.iter().zip(pos_lp) {
                let w = ((lp as f64) * inv_t).exp();
                if (id as usize) < student_vocab && id >= 0 {
                    kept.push((id, w));
                } else {
                    // padding ids of the teacher: their (tempered) mass is tail mass
                    tail_t += w;
                }
            }
            let z: f64 = kept.iter().map(|x| x.1).sum::<f64>() + tail_t;
            for j in 0..k {
                match kept.get(j) {
                    Some(&(id, w)) => {
                        out_ids.push(id);
                        probs.push((w / z) as f32);
                        valid.push(1.0f32);
                    }
                    None => {
                        out_ids.push(0);
                        probs.push(0.0);
                        valid.push(0.0);
                    }
                }
            }
            tails.push((tail_t / z) as f32);
        }
        Self {
            ids: Tensor::from_data(TensorData::new(out_ids, [b, t, k]), device),
            // f32 whatever the device's default float type: losses are computed in f32
            probs: Tensor::<3>::from_data(TensorData::new(probs, [b, t, k]), device)
                .cast(DType::F32),
            tail: Tensor::<3>::from_data(TensorData::new(tails, [b, t, 1]), device)
                .cast(DType::F32),
            valid: Tensor::<3>::from_data(TensorData::new(valid, [b, t, k]), device)
                .cast(DType::F32),
            top1,
        }
    }
}

/// Loss values of one batch (each a scalar tensor `[1]`).
pub struct KdOutput {
    pub total: Tensor<1>,
    pub kd: Tensor<1>,
    pub ce: Tensor<1>,
}

/// `log sum exp(x)` over the last axis, in chunks of `chunk` columns: `[b, t, V] -> [b, t, 1]`.
pub fn chunked_logsumexp(x: Tensor<3>, chunk: usize) -> Tensor<3> {
    let [b, t, v] = x.dims();
    let max = x.clone().max_dim(2).detach();
    let mut sum: Option<Tensor<3>> = None;
    let mut start = 0;
    while start < v {
        let len = chunk.min(v - start);
        let part = (x.clone().narrow(2, start, len) - max.clone().expand([b, t, len]))
            .exp()
            .sum_dim(2);
        sum = Some(match sum {
            Some(s) => s + part,
            None => part,
        });
        start += len;
    }
    sum.expect("non-empty vocabulary").log() + max
}

const EPS: f64 = 1e-10;

/// `sum p log(p / q)` over `k` outcomes (+ the tail, passed separately), skipping p = 0.
fn kl(p: Tensor<3>, logp: Tensor<3>, logq: Tensor<3>) -> Tensor<3> {
    let zero = p.clone().lower_equal_elem(0.0);
    (p * (logp - logq)).mask_fill(zero, 0.0).sum_dim(2)
}

/// Per-position divergence `[b, t, 1]` (before the `T^2` factor) from the student's
/// log-probabilities `logq: [b, t, k]` of the teacher's top-k at temperature T, and, for
/// [`TailMode::Uniform`], `sum_all: [b, t, 1]`, the sum of its log-probabilities over all
/// `vocab` tokens.
fn divergence(
    logq: Tensor<3>,
    sum_all: Option<Tensor<3>>,
    vocab: usize,
    teacher: &TeacherTargets,
    cfg: &KdConfig,
) -> Tensor<3> {
    let q = logq.clone().exp() * teacher.valid.clone();
    // student tail from its own top-k mass; clamped so its log stays finite
    let q_tail = (q.clone().sum_dim(2).neg() + 1.0).clamp(EPS, 1.0);
    let logq_tail = q_tail.clone().log();

    let p = teacher.probs.clone();
    let logp = p.clone().clamp_min(EPS).log();
    let p_tail = teacher.tail.clone();
    let logp_tail = p_tail.clone().clamp_min(EPS).log();

    match (cfg.loss, cfg.tail) {
        (KdLoss::ForwardKl, TailMode::Uniform) => {
            // teacher tail spread over the m student tokens outside its top-k:
            // sum_{j not in S} u (log u - log q_j) = p_tail log u - u (sum_all log q - sum_S log q)
            let valid = teacher.valid.clone();
            let m = valid.clone().sum_dim(2).neg() + vocab as f64;
            let u = p_tail.clone() / m;
            let sum_all = sum_all.expect("the uniform tail needs the sum of log q");
            let sum_s = (logq.clone() * valid).sum_dim(2);
            kl(p, logp, logq) + p_tail * u.clone().clamp_min(EPS).log() - u * (sum_all - sum_s)
        }
        (KdLoss::ForwardKl, _) => kl(p, logp, logq) + kl(p_tail, logp_tail, logq_tail),
        (KdLoss::ReverseKl, _) => kl(q, logq, logp) + kl(q_tail, logq_tail, logp_tail),
        (KdLoss::Jsd { beta }, _) => {
            let m = p.clone().mul_scalar(beta) + q.clone().mul_scalar(1.0 - beta);
            let m_tail = p_tail.clone().mul_scalar(beta) + q_tail.clone().mul_scalar(1.0 - beta);
            let (logm, logm_tail) = (m.clamp_min(EPS).log(), m_tail.clamp_min(EPS).log());
            (kl(p, logp, logm.clone()) + kl(p_tail, logp_tail, logm_tail.clone())).mul_scalar(beta)
                + (kl(q, logq, logm) + kl(q_tail, logq_tail, logm_tail)).mul_scalar(1.0 - beta)
        }
        (KdLoss::SkewKl { alpha }, _) => {
            let m = p.clone().mul_scalar(alpha) + q.mul_scalar(1.0 - alpha);
            let m_tail = p_tail.clone().mul_scalar(alpha) + q_tail.mul_scalar(1.0 - alpha);
            kl(p, logp, m.clamp_min(EPS).log()) + kl(p_tail, logp_tail, m_tail.clamp_min(EPS).log())
        }
        (KdLoss::Tvd, _) => ((p - q).abs().sum_dim(2) + (p_tail - q_tail).abs()).mul_scalar(0.5),
    }
}

/// Distillation loss of `student_logits: [b, t, V]` against `teacher`, with hard `labels: [b, t]`,
/// as plain tensor ops (autodiff differentiates every step), the student's log-sum-exp
/// computed in chunks of `cfg.vocab_chunk` columns. Positions whose label is negative
/// (padding, prompt tokens: the HF -100 convention) are left out of both losses; means are
/// over the kept positions. Training uses [`loss_from_hidden`], which gives the same values
/// and gradients.
pub fn kd_loss(
    student_logits: Tensor<3>,
    teacher: &TeacherTargets,
    labels: Tensor<2, Int>,
    cfg: &KdConfig,
) -> KdOutput {
    let temp = cfg.temperature;
    let [b, t, v] = student_logits.dims();
    // student log-probabilities of the teacher's top-k at temperature T
    let z = if temp == 1.0 {
        student_logits.clone()
    } else {
        student_logits.clone().div_scalar(temp)
    };
    let lse = chunked_logsumexp(z.clone(), cfg.vocab_chunk);
    let logq = z.clone().gather(2, teacher.ids.clone()) - lse.clone();
    let sum_all = (cfg.tail == TailMode::Uniform)
        .then(|| z.clone().sum_dim(2) - lse.clone().mul_scalar(v as f64));
    let per_pos = divergence(logq, sum_all, v, teacher, cfg);
    let (mask, kept) = position_mask(&labels);
    let mask = mask.reshape([b, t, 1]);
    let kd = (per_pos * mask.clone())
        .sum()
        .div(kept.clone())
        .mul_scalar(temp * temp);
    // cross-entropy on the hard labels at temperature 1
    let lse1 = if temp == 1.0 {
        lse
    } else {
        chunked_logsumexp(student_logits.clone(), cfg.vocab_chunk)
    };
    let picked = student_logits.gather(2, labels.clamp_min(0).reshape([b, t, 1]));
    let ce = ((lse1 - picked) * mask).sum().div(kept);
    let total = ce.clone().mul_scalar(cfg.ce_weight) + kd.clone().mul_scalar(1.0 - cfg.ce_weight);
    KdOutput { total, kd, ce }
}

/// Softmax pieces over the last axis of `x: [b, t, V]` (no autodiff), in four passes:
/// `exp(x - max)`, its sum, `logsumexp(x)`, and the argmax (from the same pass as the max).
struct SoftmaxParts {
    exp: Tensor<3>,
    sum: Tensor<3>,
    lse: Tensor<3>,
    argmax: Tensor<3, Int>,
}

fn softmax_parts(x: Tensor<3>) -> SoftmaxParts {
    let (max, argmax) = x.clone().max_dim_with_indices(2);
    let exp = (x - max.clone()).exp();
    let sum = exp.clone().sum_dim(2);
    let lse = sum.clone().log() + max;
    SoftmaxParts {
        exp,
        sum,
        lse,
        argmax,
    }
}

/// Loss values and gradient with respect to the logits of some positions (no autodiff).
struct FusedPart {
    /// `[b, t, V]`
    grad: Tensor<3>,
    kd: Tensor<1>,
    ce: Tensor<1>,
    /// `[b, t]` the most likely token of each position.
    argmax: Tensor<2, Int>,
}

/// The fused loss on logits `x: [b, t, V]` (without autodiff) of some positions, whose
/// KD and CE sums are divided by `kept`, the number of kept positions of the whole batch.
/// Without a teacher only the cross-entropy is computed (and `cfg.ce_weight` must be 1).
fn fused_part(
    x: Tensor<3>,
    teacher: Option<&TeacherTargets>,
    labels: Tensor<2, Int>,
    mask: Tensor<3>,
    kept: Tensor<1>,
    cfg: &KdConfig,
) -> FusedPart {
    let (temp, w) = (cfg.temperature, cfg.ce_weight);
    let [b, t, v] = x.dims();
    let ce_w = mask
        .clone()
        .div(kept.clone().reshape([1, 1, 1]))
        .mul_scalar(w);
    let y = labels.clamp_min(0).reshape([b, t, 1]);
    let (mut grad, kd, lse1, argmax) = match teacher {
        None => {
            let sm = softmax_parts(x.clone());
            let grad = sm.exp * (ce_w.clone() / sm.sum);
            let kd = Tensor::<1>::zeros([1], &x.device()).cast(DType::F32);
            (grad, kd, sm.lse, sm.argmax)
        }
        Some(teacher) => {
            let ids = teacher.ids.clone().inner();
            let zt = if temp == 1.0 {
                x.clone()
            } else {
                x.clone().div_scalar(temp)
            };
            let sm = softmax_parts(zt.clone());
            let lse = sm.lse;
            let logq = zt.clone().gather(2, ids.clone()) - lse.clone();
            let sum_all = (cfg.tail == TailMode::Uniform)
                .then(|| zt.sum_dim(2) - lse.clone().mul_scalar(v as f64));

            // the KD term and its gradient with respect to logq (and sum_all), on [b, t, k]
            let leaf = logq.autodiff().require_grad();
            let leaf_sum = sum_all.map(|s| s.autodiff().require_grad());
            let kd = (divergence(leaf.clone(), leaf_sum.clone(), v, teacher, cfg) * mask.clone())
                .sum()
                .div(kept.clone())
                .mul_scalar(temp * temp);
            let grads = kd.backward();
            let kd = kd.inner();
            let zeros = |dims: [usize; 3]| Tensor::<3>::zeros(dims, &x.device()).cast(DType::F32);
            let g = leaf
                .grad(&grads)
                .unwrap_or_else(|| zeros([b, t, ids.dims()[2]]));
            let h = leaf_sum.map(|l| l.grad(&grads).unwrap_or_else(|| zeros([b, t, 1])));

            // d logq_i / d zt_j = [i = j] - q_j;  d sum_all / d zt_j = 1 - V q_j;  zt = z / T
            let kd_w = (1.0 - w) / temp;
            let mut coef = g.clone().sum_dim(2);
            if let Some(h) = &h {
                coef = coef + h.clone().mul_scalar(v as f64);
            }
            // q = exp / sum, so q * c = exp * (c / sum): one pass over the vocabulary
            let c = if temp == 1.0 && w != 0.0 {
                // the cross-entropy's softmax is the same one
                coef.mul_scalar(-kd_w) + ce_w.clone()
            } else {
                coef.mul_scalar(-kd_w)
            };
            let mut grad = sm.exp * (c / sm.sum);
            if let Some(h) = h {
                grad = grad + h.mul_scalar(kd_w);
            }
            grad = grad.scatter(2, ids, g.mul_scalar(kd_w), IndexingUpdateOp::Add);
            let lse1 = if temp == 1.0 {
                lse
            } else {
                let sm1 = softmax_parts(x.clone());
                if w != 0.0 {
                    grad = grad + sm1.exp * (ce_w.clone() / sm1.sum);
                }
                sm1.lse
            };
            (grad, kd, lse1, sm.argmax)
        }
    };
    // cross-entropy on the hard labels at temperature 1: d/dz = (softmax(z) - onehot(y)) m / n
    let ce = ((lse1 - x.gather(2, y.clone())) * mask).sum().div(kept);
    if w != 0.0 {
        grad = grad.scatter(2, y, ce_w.neg(), IndexingUpdateOp::Add);
    }
    FusedPart {
        grad,
        kd,
        ce,
        argmax: argmax.reshape([b, t]),
    }
}

/// Logits rows per chunk in [`loss_from_hidden`]: about 8M logits (32 MB in f32).
fn rows_per_chunk(vocab: usize) -> usize {
    ((8 << 20) / vocab.max(1)).max(16)
}

/// What [`loss_from_hidden`] returns.
pub struct HiddenLoss {
    pub out: KdOutput,
    /// The student's most likely token per position, `[b, t]` (for top-1 agreement; left
    /// on the device until read).
    pub argmax: Tensor<2, Int>,
}

/// Training loss straight from the final hidden states `hidden: [b, t, d]` and the output
/// projection `weight: [d, V]` (logits = `hidden @ weight`): distillation against `teacher`
/// mixed with cross-entropy as [`kd_loss`], or cross-entropy alone without a teacher.
///
/// The logits are computed chunk by chunk of positions (about 8M logits each) and never
/// tracked by autodiff: each chunk's gradient is formed in closed form and pushed through
/// the projection at once (`dL/dhidden = G W^T`, `dL/dW = hidden^T G`), so the whole
/// `[b, t, V]` logits tensor never exists, whatever the vocabulary.
pub fn loss_from_hidden(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    teacher: Option<&TeacherTargets>,
    labels: Tensor<2, Int>,
    cfg: &KdConfig,
) -> HiddenLoss {
    let rows = rows_per_chunk(weight.dims()[1]);
    loss_from_hidden_in_chunks(hidden, weight, teacher, labels, cfg, rows)
}

/// [`loss_from_hidden`] with `chunk` positions per chunk.
pub fn loss_from_hidden_in_chunks(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    teacher: Option<&TeacherTargets>,
    labels: Tensor<2, Int>,
    cfg: &KdConfig,
    chunk: usize,
) -> HiddenLoss {
    let [b, t, _] = hidden.dims();
    let n = b * t;
    let cfg = match teacher {
        Some(_) => cfg.clone(),
        None => KdConfig {
            ce_weight: 1.0,
            ..cfg.clone()
        },
    };
    let flat = teacher.map(|tt| {
        let k = tt.ids.dims()[2];
        TeacherTargets {
            ids: tt.ids.clone().inner().reshape([1, n, k]),
            probs: tt.probs.clone().inner().reshape([1, n, k]),
            tail: tt.tail.clone().inner().reshape([1, n, 1]),
            valid: tt.valid.clone().inner().reshape([1, n, k]),
            top1: Vec::new(),
        }
    });
    let w = cfg.ce_weight;
    in_chunks(
        hidden,
        weight,
        labels,
        chunk,
        w,
        |z, start, len, labels, mask, kept| {
            let part_teacher = flat.as_ref().map(|f| TeacherTargets {
                ids: f.ids.clone().narrow(1, start, len),
                probs: f.probs.clone().narrow(1, start, len),
                tail: f.tail.clone().narrow(1, start, len),
                valid: f.valid.clone().narrow(1, start, len),
                top1: Vec::new(),
            });
            fused_part(z, part_teacher.as_ref(), labels, mask, kept, &cfg)
        },
    )
}

/// The chunk loop of the fused losses: logits of `chunk` positions at a time from
/// `hidden @ weight`, each chunk's loss sums and logits gradient from `part(z, start, len,
/// labels, mask, kept)`, pushed through the projection; the value is `w * CE + (1 - w) * KD`.
fn in_chunks(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
    chunk: usize,
    w: f64,
    mut part: impl FnMut(Tensor<3>, usize, usize, Tensor<2, Int>, Tensor<3>, Tensor<1>) -> FusedPart,
) -> HiddenLoss {
    let [b, t, d] = hidden.dims();
    let v = weight.dims()[1];
    let chunk = chunk.max(1);
    let n = b * t;
    let h = hidden.clone().inner().reshape([n, d]);
    let w_inner = weight.clone().inner();
    let labels = labels.inner().reshape([1, n]);
    let (mask, kept) = position_mask(&labels);
    let (mut grad_h, mut grad_w) = (Vec::new(), None::<Tensor<2>>);
    let (mut kd, mut ce) = (Vec::new(), Vec::new());
    let mut argmax = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let h_c = h.clone().narrow(0, start, len);
        let z = h_c
            .clone()
            .matmul(w_inner.clone())
            .cast(DType::F32)
            .reshape([1, len, v]);
        let part = part(
            z,
            start,
            len,
            labels.clone().narrow(1, start, len),
            mask.clone().narrow(1, start, len).reshape([1, len, 1]),
            kept.clone(),
        );
        argmax.push(part.argmax.reshape([len]));
        let g = part.grad.reshape([len, v]).cast(h.dtype());
        grad_h.push(g.clone().matmul(w_inner.clone().transpose()));
        let gw = h_c.transpose().matmul(g);
        grad_w = Some(match grad_w {
            Some(acc) => acc + gw,
            None => gw,
        });
        kd.push(part.kd);
        ce.push(part.ce);
        start += len;
    }
    let sum = |parts: Vec<Tensor<1>>| Tensor::cat(parts, 0).sum();
    let (kd, ce) = (sum(kd), sum(ce));
    let value = ce.clone().mul_scalar(w) + kd.clone().mul_scalar(1.0 - w);
    let grad_h = Tensor::cat(grad_h, 0).reshape([b, t, d]);
    // in the compute precision; the loss value is f32
    let surrogate = ((hidden * grad_h).sum()
        + (weight * grad_w.expect("at least one position")).sum())
    .cast(DType::F32);
    let total = surrogate.clone() - surrogate.detach() + value;
    HiddenLoss {
        out: KdOutput { total, kd, ce },
        argmax: Tensor::cat(argmax, 0).reshape([b, t]),
    }
}

/// What on-policy distillation's sampled-token objective needs at each position, besides
/// the sampled token itself (the position's label): `[b, t, 1]` log-probabilities.
pub struct SampledTargets {
    /// The teacher's log-probability of the sampled token.
    pub teacher_logprob: Tensor<3>,
    /// Its log-probability under the distribution it was drawn from (the student of some
    /// earlier step, after the sampling temperature, top-k and top-p).
    pub sample_logprob: Tensor<3>,
    /// The teacher's most likely token per position (-1 where there is no loss), `[b * t]`.
    pub top1: Vec<i32>,
}

impl SampledTargets {
    /// From host vectors of `b * t` values (any value where the label is negative).
    pub fn new(
        teacher_logprob: Vec<f32>,
        sample_logprob: Vec<f32>,
        top1: Vec<i32>,
        b: usize,
        t: usize,
        device: &Device,
    ) -> Self {
        let f = |v: Vec<f32>| {
            Tensor::<3>::from_data(TensorData::new(v, [b, t, 1]), device).cast(DType::F32)
        };
        Self {
            teacher_logprob: f(teacher_logprob),
            sample_logprob: f(sample_logprob),
            top1,
        }
    }
}

/// The sampled-token reverse-KL objective of on-policy distillation (Thinking Machines'
/// "on-policy distillation", GKD with a sampled estimate): at each generated position
/// with sampled token `x`, `A = log p_teacher(x) - log q(x)` is the per-token advantage
/// (held constant) and `r = q(x) / mu(x)` the importance ratio to the sampling policy
/// `mu`; the loss is `mean(-r A)` over the positions with a label, whose value is the
/// importance-weighted estimate of KL(q || p_teacher) and whose gradient is that KL's:
/// `dL/dlog q(x) = r (log q(x) - log p(x)) / n`. Temperature 1 (the policy being trained).
/// `labels` hold the sampled tokens (negative on prompts and padding). The reported `ce` is
/// the student's negative log-likelihood of its own samples; it is not part of the loss.
pub fn sampled_loss_from_hidden(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    sampled: &SampledTargets,
    labels: Tensor<2, Int>,
) -> HiddenLoss {
    let rows = rows_per_chunk(weight.dims()[1]);
    sampled_loss_from_hidden_in_chunks(hidden, weight, sampled, labels, rows)
}

/// [`sampled_loss_from_hidden`] with `chunk` positions per chunk.
pub fn sampled_loss_from_hidden_in_chunks(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    sampled: &SampledTargets,
    labels: Tensor<2, Int>,
    chunk: usize,
) -> HiddenLoss {
    let [b, t, _] = hidden.dims();
    let n = b * t;
    let tlp = sampled.teacher_logprob.clone().inner().reshape([1, n, 1]);
    let slp = sampled.sample_logprob.clone().inner().reshape([1, n, 1]);
    in_chunks(
        hidden,
        weight,
        labels,
        chunk,
        0.0,
        |z, start, len, labels, mask, kept| {
            let sm = softmax_parts(z.clone());
            let y = labels.clamp_min(0).reshape([1, len, 1]);
            let logq = z.gather(2, y.clone()) - sm.lse.clone();
            let ratio = (logq.clone() - slp.clone().narrow(1, start, len)).exp();
            let diff = logq.clone() - tlp.clone().narrow(1, start, len);
            // dL/dlog q(x) per position; masked positions get 0
            let c = (ratio * diff * mask.clone()).div(kept.clone().reshape([1, 1, 1]));
            let kd = c.clone().sum();
            let ce = (logq.neg() * mask).sum().div(kept);
            // d log q(x) / dz = onehot(x) - softmax(z)
            let grad =
                (sm.exp * (c.clone().neg() / sm.sum)).scatter(2, y, c, IndexingUpdateOp::Add);
            FusedPart {
                grad,
                kd,
                ce,
                argmax: sm.argmax.reshape([1, len]),
            }
        },
    )
}
