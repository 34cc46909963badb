//! `metrics.jsonl`: a `train` row every `log_every` optimizer steps and a `validation` row
//! after each validation, also printed as lines when no progress bar is shown.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn_train::logger::MetricLogger;
use burn_train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn_train::metric::{MetricDefinition, MetricId, NumericEntry};
use indicatif::ProgressBar;

use super::shape::RunShape;

/// Writes `metrics.jsonl`: a `train` row every `log_every` optimizer steps (means over
/// the window, weighted by tokens) and a `validation` row after each validation. Also
/// prints the same rows as lines when no progress bar is shown.
pub struct JsonlLogger {
    path: PathBuf,
    file: std::fs::File,
    shape: RunShape,
    log_every: usize,
    names: HashMap<MetricId, String>,
    distilling: bool,
    bar: ProgressBar,
    epoch: usize,
    items: usize,
    window: BTreeMap<String, (f64, f64)>,
    step_loss: (f64, f64),
    /// The learning rate of the last optimizer step, as burn-train's `LearningRateMetric`
    /// read it from the scheduler.
    lr: f64,
    valid: BTreeMap<String, (f64, f64)>,
    started: Instant,
    /// Mean loss of the last optimizer step.
    pub last_loss: Arc<Mutex<f64>>,
    /// Stage throughputs of on-policy distillation, added to each train row.
    pub onpolicy: Option<Arc<Mutex<crate::onpolicy::OnPolicyStats>>>,
}

impl JsonlLogger {
    /// The burn-train metric whose last value per step is logged as `lr`.
    pub const LR_METRIC: &str = "Learning Rate";

    pub fn open(
        path: &Path,
        shape: RunShape,
        log_every: usize,
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
            names: HashMap::new(),
            distilling,
            bar,
            epoch: 0,
            items: 0,
            window: BTreeMap::new(),
            step_loss: (0.0, 0.0),
            lr: f64::NAN,
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
        let lr = self.lr;
        let grad_norm = Self::mean(&w, "grad_norm").unwrap_or(f64::NAN);
        // rates weighted by the time between steps: tokens over time, validation left out
        let tps = Self::mean(&w, "tokens_per_second").unwrap_or(f64::NAN);
        let mut row = serde_json::json!({
            "step": step, "split": "train", "tokens": self.shape.tokens_at(step),
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
            "step": step, "split": "validation", "tokens": self.shape.tokens_at(step),
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
                let ends_step = self.shape.ends_step(self.items);
                for (k, (s, w)) in item {
                    if k == Self::LR_METRIC {
                        // the rate burn-train's scheduler gave the step this item ends
                        if ends_step && w > 0.0 {
                            self.lr = s / w;
                        }
                        continue;
                    }
                    let e = self.window.entry(k.clone()).or_default();
                    e.0 += s;
                    e.1 += w;
                    if k == "loss" {
                        self.step_loss.0 += s;
                        self.step_loss.1 += w;
                    }
                }
                if ends_step {
                    let step = self.shape.step_within(epoch, self.items);
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
