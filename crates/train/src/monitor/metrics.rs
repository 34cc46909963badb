//! Ember's numeric metrics for burn-train: running mean/last statistics of the step
//! outputs (loss, KL, gradient norm, ...) and throughput in tokens per second.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::TensorReadError;
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
/// positions). The names are the keys of `metrics.jsonl`.
#[derive(Clone)]
pub struct StatMetric {
    name: MetricName,
    read: fn(&StepStats) -> Option<(f64, usize)>,
    /// Shown as `exp(mean)` (perplexity from a log-loss).
    exp: bool,
    higher_is_better: bool,
    sum: f64,
    count: usize,
    current: (f64, usize),
}

impl StatMetric {
    fn new(name: &str, read: fn(&StepStats) -> Option<(f64, usize)>) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            read,
            exp: false,
            higher_is_better: false,
            sum: 0.0,
            count: 0,
            current: (f64::NAN, 0),
        }
    }

    fn higher_is_better(mut self) -> Self {
        self.higher_is_better = true;
        self
    }

    fn exp(mut self) -> Self {
        self.exp = true;
        self
    }

    fn show(&self, v: f64) -> f64 {
        if self.exp { v.exp() } else { v }
    }

    /// Total loss, the KD and CE terms, perplexity, top-1 agreement and gradient norm of
    /// training steps (`distilling` adds the teacher ones).
    pub fn training(distilling: bool) -> Vec<StatMetric> {
        let mut m = vec![StatMetric::new("loss", |s| Some((s.loss, s.tokens)))];
        if distilling {
            m.push(StatMetric::new("kd_loss", |s| Some((s.kd?, s.tokens))));
            m.push(StatMetric::new("ce", |s| Some((s.ce?, s.tokens))));
            m.push(StatMetric::new("perplexity", |s| Some((s.ce?, s.tokens))).exp());
            m.push(StatMetric::new("top1_agreement", |s| s.top1).higher_is_better());
        } else {
            m.push(StatMetric::new("perplexity", |s| Some((s.loss, s.tokens))).exp());
        }
        m.push(StatMetric::new("grad_norm", |s| Some((s.grad_norm?, 1))));
        m
    }

    /// Cross-entropy and perplexity on the validation text; KL to the teacher and top-1
    /// agreement when distilling.
    pub fn validation(distilling: bool) -> Vec<StatMetric> {
        let mut m = vec![
            StatMetric::new("loss", |s| Some((s.loss, s.tokens))),
            StatMetric::new("perplexity", |s| Some((s.loss, s.tokens))).exp(),
        ];
        if distilling {
            m.push(StatMetric::new("kl_to_teacher", |s| {
                Some((s.kl?, s.top1?.1))
            }));
            m.push(StatMetric::new("top1_agreement", |s| s.top1).higher_is_better());
        }
        m
    }
}

fn serialized(current: f64, running: f64, count: usize) -> SerializedEntry {
    SerializedEntry::new(
        format!("epoch {running:.4} - batch {current:.4}"),
        NumericEntry::Aggregated {
            aggregated_value: current,
            count,
        }
        .serialize(),
    )
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
        self.current = match (self.read)(item) {
            Some((v, n)) => (v, n),
            None => (self.current.0, 0),
        };
        self.sum += self.current.0 * self.current.1 as f64;
        self.count += self.current.1;
        Ok(serialized(
            self.show(self.current.0),
            self.show(self.sum / self.count.max(1) as f64),
            self.current.1,
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let v = self.show(self.sum / self.count.max(1) as f64);
        Ok(SerializedEntry::new(
            format!("{v:.4}"),
            NumericEntry::Final(v).serialize(),
        ))
    }

    fn clear(&mut self) {
        self.sum = 0.0;
        self.count = 0;
        self.current = (f64::NAN, 0);
    }
}

impl Numeric for StatMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.show(self.current.0),
            count: self.current.1,
        })
    }

    fn running_value(&self) -> Option<NumericEntry> {
        (self.count > 0).then(|| NumericEntry::Aggregated {
            aggregated_value: self.show(self.sum / self.count as f64),
            count: self.count,
        })
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.show(self.sum / self.count.max(1) as f64))
    }
}

/// Training tokens per second, from the time between consecutive micro-batches (the first of
/// each burn-train epoch has no predecessor and weight 0, so validation time is left out).
#[derive(Clone, Default)]
pub struct TokensPerSecond {
    last: Option<Instant>,
    tokens: f64,
    seconds: f64,
    current: f64,
    /// Microseconds since the previous micro-batch (the weight of `current`).
    current_micros: usize,
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
        let mut micros = 0;
        if let (Some(last), Some(now)) = (self.last, item.done_at) {
            let dt = now.duration_since(last).as_secs_f64();
            micros = (dt * 1e6) as usize;
            self.current = item.tokens as f64 / dt.max(1e-9);
            self.tokens += item.tokens as f64;
            self.seconds += dt;
        }
        self.last = item.done_at;
        self.current_micros = micros;
        // weighted by time, the mean of the rates is total tokens over total time
        Ok(serialized(
            self.current,
            self.tokens / self.seconds.max(1e-9),
            micros,
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let v = self.tokens / self.seconds.max(1e-9);
        Ok(SerializedEntry::new(
            format!("{v:.0}"),
            NumericEntry::Final(v).serialize(),
        ))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Numeric for TokensPerSecond {
    fn value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.current,
            count: self.current_micros,
        })
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Value(self.tokens / self.seconds.max(1e-9)))
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.tokens / self.seconds.max(1e-9))
    }
}
