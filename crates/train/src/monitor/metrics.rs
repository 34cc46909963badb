//! Ember's numeric metrics for burn-train: weighted means of the step outputs (loss, KL,
//! gradient norm, ...) and throughput in tokens per second, both on burn-train's
//! `NumericMetricState`. The learning rate is burn-train's own `LearningRateMetric`.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::TensorReadError;
use burn_train::metric::state::{FormatOptions, NumericMetricState};
use burn_train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};

use crate::learner::{StepStats, TrainStepOutput, ValidStepOutput};

impl Adaptor<StepStats> for TrainStepOutput {
    fn adapt(&self) -> StepStats {
        self.stats.clone()
    }
}

impl Adaptor<StepStats> for ValidStepOutput {
    fn adapt(&self) -> StepStats {
        self.stats.clone()
    }
}

/// A number read from each step's [`StepStats`], averaged with its weight (tokens or
/// positions) by burn-train's own [`NumericMetricState`]. The names are the keys of
/// `metrics.jsonl`; perplexity there is `exp` of the mean loss, computed by the logger.
#[derive(Clone)]
pub struct StatMetric {
    name: MetricName,
    read: fn(&StepStats) -> Option<(f64, usize)>,
    higher_is_better: bool,
    state: NumericMetricState,
}

impl StatMetric {
    fn new(name: &str, read: fn(&StepStats) -> Option<(f64, usize)>) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            read,
            higher_is_better: false,
            state: NumericMetricState::new(),
        }
    }

    fn higher_is_better(mut self) -> Self {
        self.higher_is_better = true;
        self
    }

    /// Total loss, the KD and CE terms, top-1 agreement and gradient norm of training
    /// steps (`distilling` adds the teacher ones).
    pub fn training(distilling: bool) -> Vec<StatMetric> {
        let mut m = vec![StatMetric::new("loss", |s| Some((s.loss, s.tokens)))];
        if distilling {
            m.push(StatMetric::new("kd_loss", |s| Some((s.kd?, s.tokens))));
            m.push(StatMetric::new("ce", |s| Some((s.ce?, s.tokens))));
            m.push(StatMetric::new("top1_agreement", |s| s.top1).higher_is_better());
        }
        m.push(StatMetric::new("grad_norm", |s| Some((s.grad_norm?, 1))));
        m
    }

    /// Cross-entropy on the validation text; KL to the teacher and top-1 agreement when
    /// distilling.
    pub fn validation(distilling: bool) -> Vec<StatMetric> {
        let mut m = vec![StatMetric::new("loss", |s| Some((s.loss, s.tokens)))];
        if distilling {
            m.push(StatMetric::new("kl_to_teacher", |s| {
                Some((s.kl?, s.top1?.1))
            }));
            m.push(StatMetric::new("top1_agreement", |s| s.top1).higher_is_better());
        }
        m
    }
}

impl Metric for StatMetric {
    type Input = StepStats;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.higher_is_better,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &StepStats,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        // a step without this number (a micro-batch that ends no optimizer step, for the
        // gradient norm) reports a zero weight, which averages leave out
        let (v, n) = (self.read)(item).unwrap_or((f64::NAN, 0));
        self.state.update(v, n);
        Ok(self
            .state
            .compute_update(FormatOptions::new(self.name()).precision(4)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self
            .state
            .compute_final(FormatOptions::new(self.name()).precision(4)))
    }

    fn clear(&mut self) {
        self.state.reset()
    }
}

/// `Numeric` for a metric whose numbers live in its `state: NumericMetricState`.
macro_rules! numeric_from_state {
    ($($metric:ty),*) => {$(
        impl Numeric for $metric {
            fn value(&self) -> Option<NumericEntry> {
                Some(self.state.current_value())
            }

            fn running_value(&self) -> Option<NumericEntry> {
                Some(self.state.running_value())
            }

            fn final_value(&self) -> NumericEntry {
                self.state.final_value()
            }
        }
    )*};
}

numeric_from_state!(StatMetric, TokensPerSecond);

/// Training tokens per second, from the time between consecutive micro-batches (the first of
/// each burn-train epoch has no predecessor and weight 0, so validation time is left out).
/// Each rate is weighted by its microseconds, so the running mean is tokens over time.
#[derive(Clone, Default)]
pub struct TokensPerSecond {
    last: Option<Instant>,
    state: NumericMetricState,
}

impl Metric for TokensPerSecond {
    type Input = StepStats;

    fn name(&self) -> MetricName {
        Arc::new("tokens_per_second".into())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("tok/s".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &StepStats,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let (rate, micros) = match (self.last, item.done_at) {
            (Some(last), Some(now)) => {
                let dt = now.duration_since(last).as_secs_f64();
                (item.tokens as f64 / dt.max(1e-9), (dt * 1e6) as usize)
            }
            _ => (f64::NAN, 0),
        };
        self.last = item.done_at;
        self.state.update(rate, micros);
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl TokensPerSecond {
    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name()).unit("tok/s").precision(0)
    }
}
