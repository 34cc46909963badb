//! What burn-train reports and keeps during a run: Ember's metrics, the `metrics.jsonl`
//! log (one row per `log_every` optimizer steps and per validation), the progress bar,
//! and step-numbered checkpoints written atomically.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::TensorReadError;
use burn_train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn_train::logger::{EvaluationProgressLogger, MetricLogger, TrainingProgressLogger};
use burn_train::metric::store::{EpochSummary, EventStoreClient, MetricsUpdate, Split};
use burn_train::metric::{
    Adaptor, Metric, MetricAttributes, MetricDefinition, MetricId, MetricMetadata, MetricName,
    Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn_train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::learner::{StepStats, TrainStepOutput, ValidStepOutput, lr_at};

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

/// Writes `metrics.jsonl`: a `train` row every `log_every` optimizer steps (means over
/// the window, weighted by tokens) and a `validation` row after each validation. Also
/// prints the same rows as lines when no progress bar is shown.
pub struct JsonlLogger {
    path: PathBuf,
    file: std::fs::File,
    shape: RunShape,
    log_every: usize,
    schedule: (usize, f64, f64),
    names: HashMap<MetricId, String>,
    distilling: bool,
    bar: ProgressBar,
    epoch: usize,
    items: usize,
    window: BTreeMap<String, (f64, f64)>,
    step_loss: (f64, f64),
    valid: BTreeMap<String, (f64, f64)>,
    started: Instant,
    /// Mean loss of the last optimizer step.
    pub last_loss: Arc<Mutex<f64>>,
    /// Stage throughputs of on-policy distillation, added to each train row.
    pub onpolicy: Option<Arc<Mutex<crate::onpolicy::OnPolicyStats>>>,
}

impl JsonlLogger {
    /// `schedule`: warmup steps, peak and minimum learning rate (for the logged `lr`).
    pub fn open(
        path: &Path,
        shape: RunShape,
        log_every: usize,
        schedule: (usize, f64, f64),
        distilling: bool,
        bar: ProgressBar,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            shape,
            log_every: log_every.max(1),
            schedule,
            names: HashMap::new(),
            distilling,
            bar,
            epoch: 0,
            items: 0,
            window: BTreeMap::new(),
            step_loss: (0.0, 0.0),
            valid: BTreeMap::new(),
            started: Instant::now(),
            last_loss: Arc::new(Mutex::new(f64::NAN)),
            onpolicy: None,
        })
    }

    fn write(&mut self, row: &serde_json::Value) {
        if let Err(e) = writeln!(self.file, "{row}").and_then(|_| self.file.flush()) {
            // burn-train's loggers cannot fail; say it loudly rather than lose it silently
            eprintln!("warning: cannot write {}: {e}", self.path.display());
        }
    }

    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}")
        } else {
            self.bar.println(line)
        }
    }

    /// Accumulate the per-item entries of `update` into `into`; false for the end-of-epoch
    /// update (final values, already counted).
    fn accumulate(
        names: &HashMap<MetricId, String>,
        update: &MetricsUpdate,
        into: &mut BTreeMap<String, (f64, f64)>,
    ) -> bool {
        let mut per_item = false;
        for u in &update.entries_numeric {
            let Some(name) = names.get(&u.entry.metric_id) else {
                continue;
            };
            let (v, w) = match u.numeric_entry {
                Some(NumericEntry::Aggregated {
                    aggregated_value,
                    count,
                }) => (aggregated_value, count as f64),
                Some(NumericEntry::Value(v)) => (v, 1.0),
                _ => continue,
            };
            per_item = true;
            if w > 0.0 && v.is_finite() {
                let e = into.entry(name.clone()).or_default();
                e.0 += v * w;
                e.1 += w;
            }
        }
        per_item
    }

    fn mean(map: &BTreeMap<String, (f64, f64)>, key: &str) -> Option<f64> {
        map.get(key).filter(|(_, w)| *w > 0.0).map(|(s, w)| s / w)
    }

    fn train_row(&mut self, step: usize) {
        let w = std::mem::take(&mut self.window);
        let loss = Self::mean(&w, "loss").unwrap_or(f64::NAN);
        let (warmup, peak, min) = self.schedule;
        let lr = lr_at(step - 1, warmup, self.shape.max_steps, peak, min);
        let grad_norm = Self::mean(&w, "grad_norm").unwrap_or(f64::NAN);
        // rates weighted by the time between steps: tokens over time, validation left out
        let tps = Self::mean(&w, "tokens_per_second").unwrap_or(f64::NAN);
        let mut row = serde_json::json!({
            "step": step, "split": "train", "tokens": step as u64 * self.shape.tokens_per_step,
            "loss": loss, "perplexity": loss.exp(), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_second": tps, "elapsed_seconds": self.started.elapsed().as_secs_f64(),
        });
        let mut detail = format!("ppl {:>8.2}", loss.exp());
        if self.distilling {
            let (kd, ce, top1) = (
                Self::mean(&w, "kd_loss").unwrap_or(f64::NAN),
                Self::mean(&w, "ce").unwrap_or(f64::NAN),
                Self::mean(&w, "top1_agreement").unwrap_or(f64::NAN),
            );
            row["kd_loss"] = kd.into();
            row["ce"] = ce.into();
            row["perplexity"] = ce.exp().into();
            row["top1_agreement"] = top1.into();
            detail = format!(
                "kd {kd:.4}  ce {ce:.4}  ppl {:>8.2}  top-1 {top1:.3}",
                ce.exp()
            );
        }
        let mut onpolicy = String::new();
        if let Some(stats) = &self.onpolicy {
            let stats = stats.lock().expect("on-policy stats");
            row["tokens"] = stats.trained_positions(step).into();
            row["onpolicy"] = stats.json();
            onpolicy = format!(" | {}", stats.line());
        }
        self.write(&row);
        self.bar.set_message(format!(
            "loss {loss:.3} | lr {lr:.2e} | {tps:.0} tok/s{onpolicy}"
        ));
        if self.bar.is_hidden() {
            self.say(format!(
                "step {step:>6}  loss {loss:.4}  {detail}  lr {lr:.2e}  gnorm {grad_norm:.3}  {tps:.0} tok/s{onpolicy}"
            ));
        }
    }

    fn valid_row(&mut self, step: usize) {
        let v = std::mem::take(&mut self.valid);
        let Some(loss) = Self::mean(&v, "loss") else {
            return;
        };
        let mut row = serde_json::json!({
            "step": step, "split": "validation", "tokens": step as u64 * self.shape.tokens_per_step,
            "loss": loss, "perplexity": loss.exp(), "eval_tokens": v["loss"].1 as u64,
        });
        if let Some(stats) = &self.onpolicy {
            row["tokens"] = stats
                .lock()
                .expect("on-policy stats")
                .trained_positions(step)
                .into();
        }
        let mut teacher = String::new();
        if let (Some(kl), Some(top1)) = (
            Self::mean(&v, "kl_to_teacher"),
            Self::mean(&v, "top1_agreement"),
        ) {
            row["kl_to_teacher"] = kl.into();
            row["top1_agreement"] = top1.into();
            teacher = format!("  KL to teacher {kl:.4}  top-1 agreement {top1:.3}");
        }
        self.write(&row);
        self.say(format!(
            "step {step:>6}  validation loss {loss:.4}  ppl {:.2}{teacher}",
            loss.exp()
        ));
    }
}

impl MetricLogger for JsonlLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        match split {
            Split::Train => {
                if epoch != self.epoch {
                    self.epoch = epoch;
                    self.items = 0;
                }
                let mut item = BTreeMap::new();
                if !Self::accumulate(&self.names, &update, &mut item) {
                    return;
                }
                self.items += 1;
                for (k, (s, w)) in item {
                    let e = self.window.entry(k.clone()).or_default();
                    e.0 += s;
                    e.1 += w;
                    if k == "loss" {
                        self.step_loss.0 += s;
                        self.step_loss.1 += w;
                    }
                }
                if self.items % self.shape.grad_accum == 0 {
                    let step = (epoch - 1) * self.shape.steps_per_epoch
                        + self.items / self.shape.grad_accum;
                    *self.last_loss.lock().expect("last loss") =
                        self.step_loss.0 / self.step_loss.1.max(1.0);
                    self.step_loss = (0.0, 0.0);
                    if step % self.log_every == 0 || step == self.shape.max_steps {
                        self.train_row(step);
                    }
                }
            }
            Split::Valid => {
                Self::accumulate(&self.names, &update, &mut self.valid);
            }
            Split::Test(_) => {}
        }
    }

    fn read_numeric(
        &mut self,
        _name: &str,
        _epoch: usize,
        _split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        // checkpoints are kept by step (StepCheckpoints), not chosen by metric value
        Err("metrics.jsonl is written, not read back".into())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        if summary.split == Split::Valid {
            self.valid_row(self.shape.step_of_epoch(summary.epoch_number));
        }
    }
}

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
            let step = (self.epoch - 1) * self.shape.steps_per_epoch
                + items_processed / self.shape.grad_accum;
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

/// Where a run's position is saved beside the model, optimizer and scheduler records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub tokens: u64,
}

/// Checkpoints as `checkpoints/step-NNNNNNNN/{model,optim,scheduler}.bpk` + `state.json`.
/// Each file is written under a temporary name and renamed; the three burn-train writers
/// meet in `step-N.tmp/`, and the last one to finish writes `state.json` and renames the
/// directory, so a `step-N/` directory is always complete.
#[derive(Clone)]
pub struct StepCheckpoints {
    pub root: PathBuf,
    pub shape: RunShape,
    finish: Arc<Mutex<()>>,
}

const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

impl StepCheckpoints {
    pub fn new(root: PathBuf, shape: RunShape) -> Self {
        Self {
            root,
            shape,
            finish: Arc::default(),
        }
    }

    pub fn dir(&self, step: usize) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// Steps of the complete checkpoints on disk, oldest first.
    pub fn steps(&self) -> std::io::Result<Vec<usize>> {
        let mut steps: Vec<usize> = std::fs::read_dir(&self.root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let step = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                p.join("state.json").is_file().then_some(step)
            })
            .collect();
        steps.sort();
        Ok(steps)
    }

    /// One writer's part of the checkpoint of burn-train epoch `epoch`.
    pub fn part(&self, part: &'static str) -> StepCheckpointPart {
        StepCheckpointPart {
            all: self.clone(),
            part,
        }
    }

    fn save_bytes(&self, epoch: usize, part: &str, bytes: &[u8]) -> std::io::Result<()> {
        let step = self.shape.step_of_epoch(epoch);
        let (dir, tmp) = (self.dir(step), self.dir(step).with_extension("tmp"));
        std::fs::create_dir_all(&tmp)?;
        ember_data::write_atomic_io(&tmp.join(format!("{part}.bpk")), bytes)?;
        let _one_at_a_time = self.finish.lock().expect("checkpoint lock");
        if PARTS.iter().all(|p| tmp.join(format!("{p}.bpk")).is_file()) {
            let state = CheckpointState {
                step,
                tokens: step as u64 * self.shape.tokens_per_step,
            };
            ember_data::write_atomic_io(
                &tmp.join("state.json"),
                serde_json::to_string_pretty(&state)
                    .expect("serializes")
                    .as_bytes(),
            )?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::rename(&tmp, &dir)?;
            ember_data::sync_parent(&dir);
        }
        Ok(())
    }
}

/// One of the three burn-train checkpointers (model, optimizer, scheduler).
pub struct StepCheckpointPart {
    all: StepCheckpoints,
    part: &'static str,
}

impl<R: Checkpoint> Checkpointer<R> for StepCheckpointPart {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        self.all
            .save_bytes(epoch, self.part, &bytes)
            .map_err(CheckpointerError::IOError)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        let dir = self.all.dir(self.all.shape.step_of_epoch(epoch));
        let _one_at_a_time = self.all.finish.lock().expect("checkpoint lock");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(CheckpointerError::IOError)?;
        }
        Ok(())
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let path = self
            .all
            .dir(self.all.shape.step_of_epoch(epoch))
            .join(format!("{}.bpk", self.part));
        let bytes = std::fs::read(&path).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(CheckpointerError::Record)
    }
}

/// Save after the epochs that end on a multiple of `every` steps and after the last step;
/// keep the newest `keep`.
pub struct EveryNSteps {
    pub shape: RunShape,
    pub every: usize,
    pub keep: usize,
    /// Epochs with a checkpoint, oldest first.
    pub saved: VecDeque<usize>,
}

impl CheckpointingStrategy for EveryNSteps {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        let step = self.shape.step_of_epoch(epoch);
        if step % self.every != 0 && step != self.shape.max_steps {
            return Vec::new();
        }
        let mut actions = vec![CheckpointingAction::Save];
        self.saved.push_back(epoch);
        while self.saved.len() > self.keep.max(1) {
            let old = self.saved.pop_front().expect("non-empty");
            actions.push(CheckpointingAction::Delete(old));
        }
        actions
    }
}
