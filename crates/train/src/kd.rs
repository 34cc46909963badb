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
//! Student normalisation is a log-sum-exp computed in chunks of the vocabulary, and
//! teacher distributions are never densified: besides the student's own logits, memory
//! is `O(B * T * k)`.

use burn::prelude::*;
use burn::tensor::DType;
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

/// Distillation loss of `student_logits: [b, t, V]` against `teacher`, with hard `labels: [b, t]`.
pub fn kd_loss(
    student_logits: Tensor<3>,
    teacher: &TeacherTargets,
    labels: Tensor<2, Int>,
    cfg: &KdConfig,
) -> KdOutput {
    let temp = cfg.temperature;
    let [b, t, _] = student_logits.dims();
    // student log-probabilities of the teacher's top-k and of the tail, at temperature T
    let z = if temp == 1.0 {
        student_logits.clone()
    } else {
        student_logits.clone().div_scalar(temp)
    };
    let lse = chunked_logsumexp(z.clone(), cfg.vocab_chunk);
    let logq = z.clone().gather(2, teacher.ids.clone()) - lse.clone();
    let q = logq.clone().exp() * teacher.valid.clone();
    // student tail from its own top-k mass; clamped so its log stays finite
    let q_tail = (q.clone().sum_dim(2).neg() + 1.0).clamp(EPS, 1.0);
    let logq_tail = q_tail.clone().log();

    let p = teacher.probs.clone();
    let logp = p.clone().clamp_min(EPS).log();
    let p_tail = teacher.tail.clone();
    let logp_tail = p_tail.clone().clamp_min(EPS).log();

    let per_pos: Tensor<3> = match (cfg.loss, cfg.tail) {
        (KdLoss::ForwardKl, TailMode::Uniform) => {
            // teacher tail spread over the m student tokens outside its top-k:
            // sum_{j not in S} u (log u - log q_j) = p_tail log u - u (sum_all log q - sum_S log q)
            let v = z.dims()[2] as f64;
            let valid = teacher.valid.clone();
            let m = valid.clone().sum_dim(2).neg() + v;
            let u = p_tail.clone() / m;
            let sum_all = z.clone().sum_dim(2) - lse.clone().mul_scalar(v);
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
    };
    // positions whose label is negative (padding, prompt tokens: the HF -100 convention)
    // are left out of both losses; means are over the kept positions
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
