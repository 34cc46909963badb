//! The one owner of the arithmetic between burn-train epochs and optimizer steps.

/// How burn-train epochs map onto the run's optimizer steps.
#[derive(Clone, Debug)]
pub struct RunShape {
    pub steps_per_epoch: usize,
    pub max_steps: usize,
    pub grad_accum: usize,
    pub tokens_per_step: u64,
}

impl RunShape {
    /// Optimizer steps done at the end of burn-train epoch `epoch` (1-based).
    pub fn step_of_epoch(&self, epoch: usize) -> usize {
        (epoch * self.steps_per_epoch).min(self.max_steps)
    }

    /// The burn-train epoch that ends at optimizer step `step`.
    pub fn epoch_of_step(&self, step: usize) -> usize {
        step.div_ceil(self.steps_per_epoch)
    }
}
