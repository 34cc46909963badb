//! The one owner of the arithmetic between burn-train epochs, micro-batches and optimizer
//! steps.
//!
//! One burn-train epoch is `steps_per_epoch` optimizer steps (the largest number that
//! divides both the validation and the checkpoint interval), so that burn-train's
//! per-epoch validation and checkpoints land on the steps the recipe asks for; each
//! optimizer step is `grad_accum` micro-batches. The last epoch may be shorter.

/// How burn-train epochs and micro-batches map onto the run's optimizer steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunShape {
    pub steps_per_epoch: usize,
    pub max_steps: usize,
    pub grad_accum: usize,
    pub tokens_per_step: u64,
}

impl RunShape {
    /// The shape of a run validating every `eval_every` steps (0: never) and saving a
    /// checkpoint every `checkpoint_every`.
    pub fn new(
        eval_every: usize,
        checkpoint_every: usize,
        max_steps: usize,
        grad_accum: usize,
        tokens_per_step: u64,
    ) -> Self {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 { a } else { gcd(b, a % b) }
        }
        Self {
            steps_per_epoch: gcd(eval_every, checkpoint_every).max(1),
            max_steps,
            grad_accum: grad_accum.max(1),
            tokens_per_step,
        }
    }

    /// Optimizer steps done at the end of burn-train epoch `epoch` (1-based).
    pub fn step_of_epoch(&self, epoch: usize) -> usize {
        (epoch * self.steps_per_epoch).min(self.max_steps)
    }

    /// The burn-train epoch that ends at optimizer step `step`.
    pub fn epoch_of_step(&self, step: usize) -> usize {
        step.div_ceil(self.steps_per_epoch)
    }

    /// Optimizer steps completed by `micro` micro-batches (counted from a step boundary).
    pub fn steps_in(&self, micro: usize) -> usize {
        micro / self.grad_accum
    }

    /// Optimizer steps of the run completed after `micro` micro-batches of burn-train
    /// epoch `epoch` (1-based).
    pub fn step_within(&self, epoch: usize, micro: usize) -> usize {
        (epoch.max(1) - 1) * self.steps_per_epoch + self.steps_in(micro)
    }

    /// Whether the `micro`-th micro-batch (1-based, counted from any step boundary) ends
    /// an optimizer step.
    pub fn ends_step(&self, micro: usize) -> bool {
        micro % self.grad_accum == 0
    }

    /// Micro-batches of the burn-train epoch that starts after `steps_done` steps.
    pub fn micro_batches_after(&self, steps_done: usize) -> usize {
        self.steps_per_epoch
            .min(self.max_steps.saturating_sub(steps_done))
            * self.grad_accum
    }

    /// Micro-batches of a full burn-train epoch.
    pub fn micro_batches_per_epoch(&self) -> usize {
        self.steps_per_epoch * self.grad_accum
    }

    /// Micro-batches of the run before optimizer step `step`.
    pub fn micro_batches_before(&self, step: usize) -> usize {
        step * self.grad_accum
    }

    /// Tokens trained on by the end of optimizer step `step` (whole packed rows).
    pub fn tokens_at(&self, step: usize) -> u64 {
        step as u64 * self.tokens_per_step
    }
}

#[cfg(test)]
mod tests {
    use super::RunShape;

    fn spe(eval_every: usize, checkpoint_every: usize) -> usize {
        RunShape::new(eval_every, checkpoint_every, 100, 1, 1).steps_per_epoch
    }

    #[test]
    fn burn_train_epochs_divide_the_validation_and_checkpoint_intervals() {
        assert_eq!(spe(25, 50), 25);
        assert_eq!(spe(100, 50), 50);
        assert_eq!(spe(140, 140), 140);
        assert_eq!(spe(4, 6), 2);
        // no validation: epochs are the checkpoint interval
        assert_eq!(spe(0, 50), 50);
    }

    #[test]
    fn epochs_micro_batches_and_steps_agree() {
        // 10 steps, 4 per epoch (the last epoch 2), 3 micro-batches each
        let s = RunShape::new(4, 8, 10, 3, 96);
        assert_eq!(s.steps_per_epoch, 4);
        assert_eq!(
            (1..=3).map(|e| s.step_of_epoch(e)).collect::<Vec<_>>(),
            [4, 8, 10]
        );
        assert_eq!(
            [4, 8, 10].map(|step| s.epoch_of_step(step)),
            [1, 2, 3],
            "each epoch's last step maps back to it"
        );
        assert_eq!(s.micro_batches_per_epoch(), 12);
        assert_eq!(s.micro_batches_after(0), 12);
        assert_eq!(s.micro_batches_after(8), 6, "the short last epoch");
        assert_eq!(s.micro_batches_after(10), 0);
        assert_eq!(s.steps_in(5), 1);
        assert_eq!(s.step_within(2, 5), 5, "two micro-batches short of step 6");
        assert_eq!(s.step_within(2, 6), 6);
        assert!(s.ends_step(6) && !s.ends_step(5));
        assert_eq!(s.micro_batches_before(8), 24);
        assert_eq!(s.tokens_at(10), 960);
    }
}
