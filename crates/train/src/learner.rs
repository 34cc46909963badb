//! The student as a burn-train [`Learner`](burn_train::Learner) model: one training step
//! (fused KD/CE loss from the hidden states, backward), the optimizer update with
//! global-norm clipping, one validation step, and the warmup+cosine schedule.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, LearningRate, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::DType;
use burn_std::ExecutionError;
use burn_train::{InferenceStep, Interrupter, ItemLazy, TrainOutput, TrainStep};
use ember_student::Student;

use crate::distill::top1_agreement;
use crate::{
    HiddenLoss, KdConfig, KdLoss, SampledTargets, TeacherTargets, cross_entropy, kd_loss,
    loss_from_hidden, sampled_loss_from_hidden,
};

/// The model burn-train trains: the student, plus the clipping threshold and the record of
/// gradient norms (one per optimizer step) that the metrics read.
#[derive(Module, Debug)]
pub struct Distiller {
    pub student: Student,
    #[module(skip)]
    pub clip: GradClip,
}

/// Global-norm clipping of each optimizer step's gradient; the norms before clipping are kept.
#[derive(Clone, Debug, Default)]
pub struct GradClip {
    /// 0 = no clipping.
    pub max_norm: f64,
    /// Norm of the gradient of every optimizer step taken by this process, in order.
    pub norms: Arc<Mutex<Vec<f64>>>,
    pub guard: NonFiniteGuard,
    /// On-policy distillation: where each update's weights go for the sampler.
    pub policy: Option<Arc<crate::onpolicy::Policy>>,
}

/// Stops the run (or skips a bounded number of steps) when a loss or gradient norm is not
/// finite. A skipped or stopping step leaves the weights and optimizer state untouched, and
/// burn-train saves no checkpoint after a stop, so the last good checkpoint stays the newest.
#[derive(Clone, Default)]
pub struct NonFiniteGuard {
    /// Optimizer steps already done before this process started (resume).
    pub first_step: usize,
    /// Steps that may be skipped before stopping.
    pub max_skips: usize,
    /// Global steps skipped so far, with what was not finite.
    pub skipped: Arc<Mutex<Vec<(usize, String)>>>,
    /// Why the run stopped, naming the step, once it has.
    pub stopped: Arc<Mutex<Option<String>>>,
    pub interrupter: Interrupter,
}

impl std::fmt::Debug for NonFiniteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonFiniteGuard")
            .field("max_skips", &self.max_skips)
            .finish()
    }
}

impl NonFiniteGuard {
    /// Record that local optimizer step `local` (0-based) had a non-finite `what`; returns
    /// whether the step is skipped (else the run stops).
    pub fn report(&self, local: usize, what: String) -> bool {
        let step = self.first_step + local + 1;
        let mut skipped = self.skipped.lock().expect("skipped steps");
        if skipped.iter().any(|(s, _)| *s == step) {
            return true;
        }
        if skipped.len() < self.max_skips {
            eprintln!(
                "warning: step {step}: {what}; step skipped ({} of train.max_nonfinite_steps = {})",
                skipped.len() + 1,
                self.max_skips
            );
            skipped.push((step, what));
            return true;
        }
        let message = format!(
            "step {step}: {what}{}; the weights were not updated and the newest checkpoint is the last good one (lower train.lr, raise train.grad_clip, or allow skips with train.max_nonfinite_steps)",
            if self.max_skips > 0 {
                format!(" after {} skipped steps", skipped.len())
            } else {
                String::new()
            }
        );
        let mut stopped = self.stopped.lock().expect("stop reason");
        if stopped.is_none() {
            *stopped = Some(message.clone());
        }
        self.interrupter.stop(Some(&message));
        false
    }
}

impl Distiller {
    pub fn new(student: Student, max_norm: f64, guard: NonFiniteGuard) -> Self {
        Self {
            student,
            clip: GradClip {
                max_norm,
                norms: Arc::default(),
                guard,
                policy: None,
            },
        }
    }
}

/// One micro-batch: `inputs`/`targets` `[b, T-1]`, and teacher targets when distilling.
pub struct TrainBatch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub teacher: Option<TeacherTargets>,
    /// On-policy micro-batches with the sampled-token objective (then `teacher` is `None`).
    pub sampled: Option<SampledTargets>,
    pub kd: KdConfig,
    /// Micro-batches per optimizer step: the loss is divided by it, so that the summed
    /// gradients of a step are their mean.
    pub grad_accum: usize,
    /// Predicted positions in this micro-batch.
    pub tokens: usize,
    /// Index (in this process) of the optimizer step this micro-batch ends, if it ends one.
    pub ends_step: Option<usize>,
}

/// What a training step reports; tensors until [`ItemLazy::sync`] reads them.
pub struct TrainStepOutput {
    pending: Option<PendingTrain>,
    grad_norms: Arc<Mutex<Vec<f64>>>,
    guard: NonFiniteGuard,
    ends_step: Option<usize>,
    pub stats: StepStats,
}

/// A training step's loss tensors (total, KD, CE) and, when distilling, the student's
/// argmax with the teacher's top-1 and the targets (agreement counts positions with a loss).
struct PendingTrain {
    total: Tensor<1>,
    kd: Tensor<1>,
    ce: Tensor<1>,
    agreement: Option<(Tensor<2, Int>, Vec<i32>, Tensor<2, Int>)>,
}

/// A validation step's cross-entropy and, when distilling, KL, argmax, teacher top-1 and
/// the targets.
struct PendingValid {
    ce: Tensor<1>,
    teacher: Option<(Tensor<1>, Tensor<3, Int>, Vec<i32>, Tensor<2, Int>)>,
}

/// The teacher's top-1 with positions that have no loss (negative target: prompt, padding)
/// marked -1, so that agreement counts the positions the loss covers.
fn top1_with_loss(mut top1: Vec<i32>, targets: Tensor<2, Int>) -> Result<Vec<i32>, ExecutionError> {
    let targets = targets
        .try_into_data()?
        .try_into_vec_as::<i64>()
        .expect("int targets");
    for (t, y) in top1.iter_mut().zip(targets) {
        if y < 0 {
            *t = -1;
        }
    }
    Ok(top1)
}

/// Host-side numbers of one training or validation micro-batch; every metric reads these.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    /// Predicted positions (the weight of the loss values).
    pub tokens: usize,
    /// Loss minimised (training) or cross-entropy on the real text (validation).
    pub loss: f64,
    /// Distillation term and cross-entropy on the hard labels (when distilling).
    pub kd: Option<f64>,
    pub ce: Option<f64>,
    /// Forward KL to the teacher at temperature 1 (validation when distilling).
    pub kl: Option<f64>,
    /// Share of positions where the student's argmax is the teacher's, and their count.
    pub top1: Option<(f64, usize)>,
    /// Global gradient norm before clipping (the micro-batch that ends an optimizer step).
    pub grad_norm: Option<f64>,
    /// When the training step's backward pass returned (for tokens/s).
    pub done_at: Option<Instant>,
}

impl TrainStep for Distiller {
    type Input = TrainBatch;
    type Output = TrainStepOutput;

    fn step(&self, item: TrainBatch) -> TrainOutput<TrainStepOutput> {
        // losses in f32 whatever the compute precision; logits chunk by chunk inside the
        // loss, never as a whole [b, t, V] tensor
        let hidden = self.student.forward_hidden(item.inputs, None);
        let targets = item.targets.clone();
        let HiddenLoss { out, argmax } = match &item.sampled {
            Some(sampled) => {
                sampled_loss_from_hidden(hidden, self.student.head_weight(), sampled, item.targets)
            }
            None => loss_from_hidden(
                hidden,
                self.student.head_weight(),
                item.teacher.as_ref(),
                item.targets,
                &item.kd,
            ),
        };
        let grads = out
            .total
            .clone()
            .div_scalar(item.grad_accum as f64)
            .backward();
        let done_at = Some(Instant::now());
        let agreement = match (item.teacher, item.sampled) {
            (Some(t), _) => Some((argmax, t.top1, targets)),
            (None, Some(s)) => Some((argmax, s.top1, targets)),
            (None, None) => None,
        };
        let output = TrainStepOutput {
            pending: Some(PendingTrain {
                total: out.total,
                kd: out.kd,
                ce: out.ce,
                agreement,
            }),
            grad_norms: self.clip.norms.clone(),
            guard: self.clip.guard.clone(),
            ends_step: item.ends_step,
            stats: StepStats {
                tokens: item.tokens,
                done_at,
                ..StepStats::default()
            },
        };
        TrainOutput::new(self, grads, output)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        let (grads, norm) = clip_global_norm(&self, grads, self.clip.max_norm);
        let local = {
            let mut norms = self.clip.norms.lock().expect("grad norms");
            norms.push(norm);
            norms.len() - 1
        };
        let version = self.clip.guard.first_step + local + 1;
        let next = if norm.is_finite() {
            optim.step(lr, self, grads)
        } else {
            // skipped or stopping: either way these gradients never reach the weights
            self.clip
                .guard
                .report(local, format!("gradient norm is {norm}"));
            self
        };
        if let Some(policy) = &next.clip.policy {
            policy.publish(version, next.student.valid());
        }
        next
    }
}

impl ItemLazy for TrainStepOutput {
    fn sync(mut self) -> Result<Self, ExecutionError> {
        if let Some(PendingTrain {
            total,
            kd,
            ce,
            agreement,
        }) = self.pending.take()
        {
            self.stats.loss = host_scalar(total)?;
            if !self.stats.loss.is_finite()
                && let Some(step) = self.ends_step
            {
                self.guard
                    .report(step, format!("training loss is {}", self.stats.loss));
            }
            if let Some((argmax, teacher_top1, targets)) = agreement {
                let teacher_top1 = top1_with_loss(teacher_top1, targets)?;
                self.stats.kd = Some(host_scalar(kd)?);
                self.stats.ce = Some(host_scalar(ce)?);
                let argmax = argmax
                    .try_into_data()?
                    .try_into_vec_as::<i64>()
                    .expect("int argmax");
                let n = teacher_top1.iter().filter(|&&t| t >= 0).count();
                self.stats.top1 = Some((top1_agreement(&argmax, &teacher_top1), n));
            }
        }
        if let Some(step) = self.ends_step {
            // the optimizer step ran before burn-train hands the item to the metrics
            self.stats.grad_norm = self
                .grad_norms
                .lock()
                .expect("grad norms")
                .get(step)
                .copied();
        }
        Ok(self)
    }
}

/// One validation batch: cross-entropy on `(inputs, targets)`; when distilling, KL and
/// top-1 agreement against the teacher's targets for `teacher_inputs` (the same rows as
/// `inputs` unless recorded validation logits hold other rows).
pub struct ValidBatch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    pub tokens: usize,
    pub teacher: Option<ValidTeacherBatch>,
}

pub struct ValidTeacherBatch {
    /// `None` when the teacher saw `inputs` itself.
    pub inputs: Option<Tensor<2, Int>>,
    pub targets: Tensor<2, Int>,
    pub teacher: TeacherTargets,
}

/// What a validation step reports; tensors until [`ItemLazy::sync`].
pub struct ValidStepOutput {
    pending: Option<PendingValid>,
    pub stats: StepStats,
}

impl InferenceStep for Distiller {
    type Input = ValidBatch;
    type Output = ValidStepOutput;

    fn step(&self, item: ValidBatch) -> ValidStepOutput {
        valid_step(&self.student, item)
    }
}

/// Cross-entropy, and forward KL (T = 1) and top-1 agreement when a teacher is given.
pub fn valid_step(student: &Student, item: ValidBatch) -> ValidStepOutput {
    let logits = student.forward(item.inputs).cast(DType::F32);
    let ce = cross_entropy(logits.clone(), item.targets);
    let teacher = item.teacher.map(|t| {
        let logits = match t.inputs {
            Some(inputs) => student.forward(inputs).cast(DType::F32),
            None => logits,
        };
        let cfg = KdConfig {
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
            ce_weight: 0.0,
            ..KdConfig::default()
        };
        let argmax = logits.clone().argmax(2);
        let kl = kd_loss(logits, &t.teacher, t.targets.clone(), &cfg).kd;
        (kl, argmax, t.teacher.top1, t.targets)
    });
    ValidStepOutput {
        pending: Some(PendingValid { ce, teacher }),
        stats: StepStats {
            tokens: item.tokens,
            ..StepStats::default()
        },
    }
}

impl ItemLazy for ValidStepOutput {
    fn sync(mut self) -> Result<Self, ExecutionError> {
        if let Some(PendingValid { ce, teacher }) = self.pending.take() {
            self.stats.loss = host_scalar(ce)?;
            if let Some((kl, argmax, top1, targets)) = teacher {
                self.stats.kl = Some(host_scalar(kl)?);
                let argmax = argmax
                    .try_into_data()?
                    .try_into_vec_as::<i64>()
                    .expect("int argmax");
                let top1 = top1_with_loss(top1, targets)?;
                let n = top1.iter().filter(|&&t| t >= 0).count();
                self.stats.top1 = Some((top1_agreement(&argmax, &top1), n));
            }
        }
        Ok(self)
    }
}

/// A one-element tensor's value on the host.
fn host_scalar(t: Tensor<1>) -> Result<f64, ExecutionError> {
    let data = t.try_into_data()?;
    Ok(data.try_into_vec_as::<f64>().expect("float scalar")[0])
}

/// Scale all gradients so that their global L2 norm is at most `max_norm` (0 = no clipping).
/// Returns the norm before clipping. Burn's own `GradientClipping::Norm` clips each tensor
/// separately, which is not what LLM recipes mean by clipping.
pub fn clip_global_norm<M: Module>(
    model: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    // The squares are summed on the device into one scalar, read once per step: a read per
    // parameter would wait for the device that many times (a GPU drains its queue at each).
    // In f32 whatever the training precision.
    struct SquaredNorm<'a> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SquaredNorm<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(p.id) {
                let squares = g.cast(DType::F32).square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(sum) => sum + squares,
                    None => squares,
                });
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
        sum: None,
    };
    model.visit(&mut norm);
    let norm = norm.sum.map_or(0.0, |sum| sum.into_scalar::<f64>().sqrt());
    if max_norm > 0.0 && norm > max_norm {
        model.visit(&mut Scale {
            grads: &mut grads,
            factor: max_norm / (norm + 1e-6),
        });
    }
    (grads, norm)
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

/// [`lr_at`] as a burn scheduler; its record is the number of steps taken.
#[derive(Clone, Debug)]
pub struct WarmupCosine {
    pub warmup: usize,
    pub total: usize,
    pub peak: f64,
    pub min: f64,
    pub step: usize,
}

impl LrScheduler for WarmupCosine {
    fn step(&mut self) -> LearningRate {
        let lr = lr_at(self.step, self.warmup, self.total, self.peak, self.min);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod agreement_tests {
    use super::*;

    #[test]
    fn top1_agreement_counts_only_positions_with_a_loss() {
        let device = Device::flex();
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(vec![-100i64, 3, -100, 4], [1, 4]),
            &device,
        );
        let top1 = top1_with_loss(vec![5, 6, 7, 8], targets).unwrap();
        assert_eq!(top1, vec![-1, 6, -1, 8]);
        // the student matches at positions 0 (no loss), 1 (hit) and 2 (no loss), misses 3
        assert_eq!(top1_agreement(&[5, 6, 7, 0], &top1), 0.5);
    }
}

#[cfg(test)]
mod clip_tests {
    use super::*;

    #[derive(Module, Debug)]
    struct Pair {
        a: Param<Tensor<2>>,
        b: Param<Tensor<1>>,
    }

    fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// loss = sum(a^2) / 2 + 3 sum(b): the gradients are a and 3, norm sqrt(14.25 + 18).
    fn pair_and_grads() -> (Pair, GradientsParams) {
        let device = Device::flex().autodiff();
        let a = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 3.0, 0.5], [2, 2]),
            &device,
        );
        let b = Tensor::<1>::from_data(TensorData::new(vec![4.0f32, -1.0], [2]), &device);
        let model = Pair {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
        };
        let loss =
            model.a.val().square().sum().div_scalar(2.0) + model.b.val().sum().mul_scalar(3.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads)
    }

    #[test]
    fn the_global_norm_scales_every_gradient_by_one_factor() {
        let expected = 32.25f64.sqrt();
        // above the norm: nothing changes
        let (model, grads) = pair_and_grads();
        let (grads, norm) = clip_global_norm(&model, grads, 10.0);
        assert!((norm - expected).abs() < 1e-6, "norm {norm}");
        assert_eq!(
            floats(grads.get::<2>(model.a.id).unwrap()),
            [1.0, -2.0, 3.0, 0.5]
        );
        // below: all gradients by max_norm / norm, so that their joint norm is max_norm
        let (model, grads) = pair_and_grads();
        let (grads, norm) = clip_global_norm(&model, grads, 2.0);
        assert!((norm - expected).abs() < 1e-6, "norm {norm}");
        let f = (2.0 / (expected + 1e-6)) as f32;
        let a = floats(grads.get::<2>(model.a.id).unwrap());
        let b = floats(grads.get::<1>(model.b.id).unwrap());
        for (got, want) in a.iter().chain(&b).zip([1.0f32, -2.0, 3.0, 0.5, 3.0, 3.0]) {
            assert!((got - want * f).abs() < 1e-6, "{got} vs {}", want * f);
        }
        let clipped: f32 = a.iter().chain(&b).map(|g| g * g).sum::<f32>().sqrt();
        assert!((clipped - 2.0).abs() < 1e-5, "clipped norm {clipped}");
        // 0 turns clipping off; the norm is still reported
        let (model, grads) = pair_and_grads();
        let (grads, norm) = clip_global_norm(&model, grads, 0.0);
        assert!((norm - expected).abs() < 1e-6);
        assert_eq!(floats(grads.get::<1>(model.b.id).unwrap()), [3.0, 3.0]);
    }

    #[test]
    fn bf16_gradients_are_summed_in_f32() {
        // 17 x 241 = 4097 gradients of 1 in bf16: their sum of squares is 4097, which bf16
        // (8 significant bits) cannot hold; a bf16 result would round it to 4096
        let device = Device::flex().autodiff();
        let model = Pair {
            a: Param::from_tensor(Tensor::<2>::zeros([17, 241], &device).cast(DType::BF16)),
            b: Param::from_tensor(Tensor::<1>::zeros([1], &device).cast(DType::BF16)),
        };
        let loss = model.a.val().sum() + model.b.val().sum().mul_scalar(0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (_, norm) = clip_global_norm(&model, grads, 0.0);
        assert!((norm - 4097f64.sqrt()).abs() < 1e-9, "norm {norm}");
    }

    #[test]
    fn a_model_without_gradients_has_norm_zero() {
        let (model, _) = pair_and_grads();
        let (_, norm) = clip_global_norm(&model, GradientsParams::new(), 1.0);
        assert_eq!(norm, 0.0);
    }
}
