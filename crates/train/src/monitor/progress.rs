//! The progress bar, counted in optimizer steps rather than burn-train epochs.

use burn_train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn_train::metric::MetricDefinition;
use burn_train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use indicatif::ProgressBar;

use super::shape::RunShape;

/// The progress bar, in optimizer steps.
pub struct StepBar {
    pub bar: ProgressBar,
    pub shape: RunShape,
    epoch: usize,
    training: bool,
}

impl StepBar {
    pub fn new(bar: ProgressBar, shape: RunShape) -> Self {
        Self {
            bar,
            shape,
            epoch: 0,
            training: false,
        }
    }
}

impl TrainingProgressLogger for StepBar {
    fn start(
        &mut self,
        _total: usize,
        starting_epoch: usize,
        _items: Option<usize>,
        _: Option<&str>,
    ) {
        self.epoch = starting_epoch.saturating_sub(1);
    }
    fn update_epoch(&mut self, _epoch: usize) {}
    fn start_split(&mut self, split: &str, _total_items: usize) {
        self.training = split == "train";
        if self.training {
            self.epoch += 1;
        }
    }
    fn update_split(&mut self, items_processed: usize) {
        if self.training {
            let step = self.shape.step_within(self.epoch, items_processed);
            self.bar.set_position(step as u64);
        }
    }
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for StepBar {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererTraining for StepBar {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl MetricsRendererEvaluation for StepBar {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for StepBar {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}
