//! The report directory: `report.json`, `points.csv`, `ppl_vs_tokens.{svg,png}`,
//! `ppl_vs_flops.{svg,png}` and `README.md` (the summary with the token ratios).

use std::path::{Path, PathBuf};

use ember_train::{KdConfig, KdLoss, TailMode};
use serde::{Deserialize, Serialize};

use crate::flops::ModelShape;
use crate::plot::{Plot, Series};
use crate::{ExperimentConfig, ExperimentError, write};

/// One validation point of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub step: usize,
    pub tokens: u64,
    pub loss: f64,
    pub perplexity: f64,
    /// Validation tokens the point was measured on.
    pub eval_tokens: u64,
    pub kl_to_teacher: Option<f64>,
    pub top1_agreement: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub distilled: bool,
    pub top_k: Option<usize>,
    /// Loss description (distilled runs).
    pub loss: Option<String>,
    pub points: Vec<Point>,
    pub num_params: usize,
    /// Wall time of the last invocation that trained (0 when the run was already finished).
    pub seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherTraining {
    pub tokens: u64,
    pub num_params: u64,
    pub validation_perplexity: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    pub k: usize,
    pub train_positions: u64,
    pub bytes_per_token: f64,
    pub seconds_this_invocation: f64,
}

/// How a distilled run compares with the baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub run: String,
    pub final_perplexity: f64,
    /// Tokens the run needed to reach the baseline's final perplexity (interpolated between
    /// validation points in log-perplexity); None when it never did.
    pub tokens_to_baseline_quality: Option<f64>,
    /// Baseline tokens / those tokens (> 1: distillation needed fewer tokens).
    pub token_ratio: Option<f64>,
    /// Student training FLOPs to reach it.
    pub student_flops_to_baseline_quality: Option<f64>,
    /// The same plus the teacher forwards on the tokens used so far (recording), not amortised.
    pub with_teacher_flops_to_baseline_quality: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub config: ExperimentConfig,
    pub teacher_dir: PathBuf,
    pub teacher_training: Option<TeacherTraining>,
    pub teacher_shape: ModelShape,
    pub student_shape: ModelShape,
    pub recording: Option<Recording>,
    pub runs: Vec<RunResult>,
    pub baseline: String,
    pub baseline_final_perplexity: f64,
    pub baseline_tokens: u64,
    pub comparisons: Vec<Comparison>,
}

/// Validation rows of a run's metrics.jsonl; a resumed run's repeated steps keep the last.
pub fn read_points(path: &Path) -> Result<Vec<Point>, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut points: Vec<Point> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |m: String| ExperimentError::Metrics {
            path: path.to_path_buf(),
            message: format!("line {}: {m}", i + 1),
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if v["split"] != "validation" {
            continue;
        }
        let num = |k: &str| v[k].as_f64().ok_or_else(|| bad(format!("no {k}")));
        let p = Point {
            step: num("step")? as usize,
            tokens: num("tokens")? as u64,
            loss: num("loss")?,
            perplexity: num("perplexity")?,
            eval_tokens: v["eval_tokens"].as_u64().unwrap_or(0),
            kl_to_teacher: v["kl_to_teacher"].as_f64(),
            top1_agreement: v["top1_agreement"].as_f64(),
        };
        points.retain(|q| q.step != p.step);
        points.push(p);
    }
    points.sort_by_key(|p| p.step);
    if points.is_empty() {
        return Err(ExperimentError::Metrics {
            path: path.to_path_buf(),
            message: "no validation rows".into(),
        });
    }
    Ok(points)
}

/// First token count at which `points` reach `target` perplexity, interpolating linearly in
/// log-perplexity between consecutive points; None if never.
pub fn tokens_to_reach(points: &[Point], target: f64) -> Option<f64> {
    let first = points.first()?;
    if first.perplexity <= target {
        return Some(first.tokens as f64);
    }
    for w in points.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.perplexity <= target {
            let (la, lb, lt) = (a.perplexity.ln(), b.perplexity.ln(), target.ln());
            let f = if la == lb { 1.0 } else { (la - lt) / (la - lb) };
            return Some(a.tokens as f64 + f * (b.tokens as f64 - a.tokens as f64));
        }
    }
    None
}

/// "forward_kl T=1 ce=0.5 tail=bucket".
pub fn describe(kd: &KdConfig) -> String {
    let loss = match kd.loss {
        KdLoss::ForwardKl => "forward_kl".to_string(),
        KdLoss::ReverseKl => "reverse_kl".to_string(),
        KdLoss::Jsd { beta } => format!("jsd(beta={beta})"),
        KdLoss::SkewKl { alpha } => format!("skew_kl(alpha={alpha})"),
        KdLoss::Tvd => "tvd".to_string(),
    };
    let tail = match kd.tail {
        TailMode::Bucket => "bucket",
        TailMode::Uniform => "uniform",
    };
    format!(
        "{loss} T={} ce_weight={} tail={tail}",
        kd.temperature, kd.ce_weight
    )
}

impl Report {
    pub fn new(
        config: &ExperimentConfig,
        teacher_dir: PathBuf,
        teacher_training: Option<TeacherTraining>,
        teacher_shape: ModelShape,
        student_shape: ModelShape,
        recording: Option<Recording>,
        runs: Vec<RunResult>,
    ) -> Self {
        let base = runs.iter().find(|r| !r.distilled).expect("one baseline");
        let last = base.points.last().expect("points");
        let (target, base_tokens) = (last.perplexity, last.tokens);
        let train_fpt = student_shape.train_flops_per_token();
        let teacher_fpt = teacher_shape.forward_flops_per_token();
        let comparisons = runs
            .iter()
            .filter(|r| r.distilled)
            .map(|r| {
                let reach = tokens_to_reach(&r.points, target);
                Comparison {
                    run: r.name.clone(),
                    final_perplexity: r.points.last().map_or(f64::NAN, |p| p.perplexity),
                    tokens_to_baseline_quality: reach,
                    token_ratio: reach.map(|t| base_tokens as f64 / t.max(1.0)),
                    student_flops_to_baseline_quality: reach.map(|t| t * train_fpt),
                    with_teacher_flops_to_baseline_quality: reach
                        .map(|t| t * (train_fpt + teacher_fpt)),
                }
            })
            .collect();
        Self {
            config: config.clone(),
            teacher_dir,
            teacher_training,
            teacher_shape,
            student_shape,
            recording,
            baseline: base.name.clone(),
            baseline_final_perplexity: target,
            baseline_tokens: base_tokens,
            runs,
            comparisons,
        }
    }

    /// Write every report file into `out`.
    pub fn write(&self, out: &Path) -> Result<(), ExperimentError> {
        write(
            &out.join("report.json"),
            serde_json::to_string_pretty(self).expect("report serializes"),
        )?;
        let csv_path = out.join("points.csv");
        let csv_bytes = self.csv().map_err(|source| ExperimentError::Csv {
            path: csv_path.clone(),
            source,
        })?;
        write(&csv_path, csv_bytes)?;
        self.plot(false).write(out, "ppl_vs_tokens")?;
        self.plot(true).write(out, "ppl_vs_flops")?;
        write(&out.join("README.md"), self.markdown())?;
        Ok(())
    }

    /// Perplexity against student training tokens, or against FLOPs (then the distilled runs
    /// once more, dashed, with the teacher's recording forwards added).
    fn plot(&self, flops: bool) -> Plot {
        let train_fpt = self.student_shape.train_flops_per_token();
        let teacher_fpt = self.teacher_shape.forward_flops_per_token();
        let line = |name: String, r: &RunResult, dashed: bool, per_token: f64| Series {
            name,
            dashed,
            points: r
                .points
                .iter()
                .map(|p| (p.tokens as f64 * per_token, p.perplexity))
                .collect(),
        };
        let mut series: Vec<Series> = self
            .runs
            .iter()
            .map(|r| {
                line(
                    r.name.clone(),
                    r,
                    false,
                    if flops { train_fpt } else { 1.0 },
                )
            })
            .collect();
        if flops {
            series.extend(self.runs.iter().filter(|r| r.distilled).map(|r| {
                line(
                    format!("{} + teacher", r.name),
                    r,
                    true,
                    train_fpt + teacher_fpt,
                )
            }));
        }
        let (title, x_label) = if flops {
            (
                "Validation perplexity vs compute",
                "FLOPs (student training; dashed: + teacher forwards)",
            )
        } else {
            (
                "Validation perplexity vs training tokens",
                "student training tokens",
            )
        };
        Plot {
            title: title.into(),
            x_label: x_label.into(),
            series,
            target: Some(self.baseline_final_perplexity),
        }
    }

    /// Every validation point of every run, one CSV row each (quoted where needed).
    fn csv(&self) -> Result<Vec<u8>, csv::Error> {
        #[derive(Serialize)]
        struct Row<'a> {
            run: &'a str,
            distilled: bool,
            top_k: Option<usize>,
            step: usize,
            tokens: u64,
            student_flops: f64,
            teacher_forward_flops: f64,
            validation_loss: f64,
            validation_perplexity: f64,
            eval_tokens: u64,
            kl_to_teacher: Option<f64>,
            top1_agreement: Option<f64>,
        }
        let train_fpt = self.student_shape.train_flops_per_token();
        let teacher_fpt = self.teacher_shape.forward_flops_per_token();
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &self.runs {
            for p in &r.points {
                w.serialize(Row {
                    run: &r.name,
                    distilled: r.distilled,
                    top_k: r.top_k,
                    step: p.step,
                    tokens: p.tokens,
                    student_flops: p.tokens as f64 * train_fpt,
                    teacher_forward_flops: if r.distilled {
                        p.tokens as f64 * teacher_fpt
                    } else {
                        0.0
                    },
                    validation_loss: p.loss,
                    validation_perplexity: p.perplexity,
                    eval_tokens: p.eval_tokens,
                    kl_to_teacher: p.kl_to_teacher,
                    top1_agreement: p.top1_agreement,
                })?;
            }
        }
        w.into_inner().map_err(|e| e.into_error().into())
    }

    /// README.md: the result table and verdict, the plots, the compute accounting and every
    /// validation point, as a list of Markdown blocks.
    fn markdown(&self) -> String {
        let st = &self.student_shape;
        let te = &self.teacher_shape;
        let train_fpt = st.train_flops_per_token();
        let teacher_fpt = te.forward_flops_per_token();
        let n_kd = self.runs.iter().filter(|r| r.distilled).count().max(1);
        let base_flops = self.baseline_tokens as f64 * train_fpt;
        let e3 = |x: f64| format!("{x:.3e}");
        let or_not =
            |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map(f).unwrap_or("not reached".into());
        let mut doc: Vec<String> = vec![
            "# Train the trainer: distilled vs from-scratch students".into(),
            format!(
                "Dataset `{}`; every student run sees the same {} training tokens (one epoch over the same rows, \
                 same seed, schedule and shape); validation perplexity on real text ({} tokens at the last point).",
                self.config.experiment.dataset.display(),
                self.baseline_tokens,
                self.runs[0].points.last().map_or(0, |p| p.eval_tokens)
            ),
            "## Result".into(),
            format!(
                "Baseline `{}` (cross-entropy from scratch) ends at perplexity **{:.2}** after {} tokens.",
                self.baseline, self.baseline_final_perplexity, self.baseline_tokens
            ),
        ];
        let mut result = Table::new([
            "run".to_string(),
            "loss".into(),
            "top-k".into(),
            "final ppl".into(),
            format!("tokens to reach {:.2}", self.baseline_final_perplexity),
            "token ratio".into(),
            "student FLOPs to reach it".into(),
            "+ teacher forwards".into(),
        ]);
        result.row([
            self.baseline.clone(),
            "cross-entropy".into(),
            "-".into(),
            format!("{:.2}", self.baseline_final_perplexity),
            self.baseline_tokens.to_string(),
            "1.00x".into(),
            e3(base_flops),
            "-".into(),
        ]);
        for c in &self.comparisons {
            let r = self.runs.iter().find(|r| r.name == c.run).expect("run");
            result.row([
                r.name.clone(),
                r.loss.clone().unwrap_or_default(),
                r.top_k.map(|k| k.to_string()).unwrap_or_default(),
                format!("{:.2}", c.final_perplexity),
                or_not(c.tokens_to_baseline_quality, &|t| format!("{t:.0}")),
                or_not(c.token_ratio, &|x| format!("{x:.2}x")),
                or_not(c.student_flops_to_baseline_quality, &e3),
                or_not(c.with_teacher_flops_to_baseline_quality, &e3),
            ]);
        }
        doc.push(result.render());
        doc.push(self.verdict(base_flops));
        doc.push("![perplexity vs tokens](ppl_vs_tokens.svg)".into());
        doc.push("![perplexity vs FLOPs](ppl_vs_flops.svg)".into());
        doc.push("## Compute accounting".into());
        doc.push(
            "Forward FLOPs per token = 2 x (parameters in matrix products) + 2 x layers x context x (heads x head_dim); \
             training = 3 x forward. The input embedding lookup is not a matrix product (a tied table is counted once, \
             as the LM head). Norms, activations, softmax and the optimizer are left out."
                .into(),
        );
        let mut shapes = Table::new(
            [
                "model",
                "params",
                "matmul params",
                "layers",
                "attn dim",
                "context",
                "forward FLOPs/token",
                "train FLOPs/token",
            ]
            .map(String::from),
        );
        for (name, s) in [("student", st), ("teacher", te)] {
            shapes.row([
                name.to_string(),
                s.params.to_string(),
                s.matmul_params.to_string(),
                s.layers.to_string(),
                s.attn_dim.to_string(),
                s.context.to_string(),
                format!("{:.4e}", s.forward_flops_per_token()),
                format!("{:.4e}", s.train_flops_per_token()),
            ]);
        }
        doc.push(shapes.render());
        if te.counts_all_experts {
            doc.push(
                "The teacher is a mixture of experts and its count includes every expert: its FLOPs are an upper bound."
                    .into(),
            );
        }
        let mut teacher = vec![format!("Teacher `{}`:", self.teacher_dir.display())];
        teacher.push(match &self.teacher_training {
            Some(t) => format!(
                "- training (cross-entropy, by Ember): {} tokens x {:.4e} = **{:.3e} FLOPs** (validation perplexity {:.2}); \
                 a one-off cost, shared by every student distilled from it.",
                t.tokens,
                te.train_flops_per_token(),
                t.tokens as f64 * te.train_flops_per_token(),
                t.validation_perplexity
            ),
            None => "- training: unknown (an existing checkpoint without Ember's summary.json).".into(),
        });
        if let Some(r) = &self.recording {
            let total = r.train_positions as f64 * teacher_fpt;
            teacher.push(format!(
                "- recording its top-{} on the {} training positions: {:.3e} FLOPs, stored at {:.1} bytes/token; \
                 shared by the {n_kd} distilled runs here ({:.3e} each when amortised). Validation logits are recorded \
                 too, for the KL/agreement columns only.",
                r.k,
                r.train_positions,
                total,
                r.bytes_per_token,
                total / n_kd as f64
            ));
        }
        doc.push(teacher.join("\n"));
        doc.push("## Every validation point".into());
        let mut points = Table::new(
            [
                "run",
                "step",
                "tokens",
                "ppl",
                "KL to teacher",
                "top-1 agreement",
            ]
            .map(String::from),
        );
        let o = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        for r in &self.runs {
            for p in &r.points {
                points.row([
                    r.name.clone(),
                    p.step.to_string(),
                    p.tokens.to_string(),
                    format!("{:.2}", p.perplexity),
                    o(p.kl_to_teacher),
                    o(p.top1_agreement),
                ]);
            }
        }
        doc.push(points.render());
        doc.push(format!(
            "Intermediate points are measured on {} validation batches (0 = all), the last point of every run on the \
             whole validation split. Files: `report.json`, `points.csv`, the plots as SVG and PNG, `runs/<name>/` \
             (metrics, checkpoints, model), `logits/` (the recording), `experiment.toml` (the resolved config).",
            self.config.experiment.eval_batches
        ));
        doc.join("\n\n") + "\n"
    }

    /// One paragraph: did the best distilled run reach the baseline with fewer tokens?
    fn verdict(&self, base_flops: f64) -> String {
        let best = self
            .comparisons
            .iter()
            .filter_map(|c| c.token_ratio.map(|r| (r, c)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((ratio, c)) if ratio > 1.0 => {
                let with_teacher = c.with_teacher_flops_to_baseline_quality.unwrap_or(f64::NAN);
                format!(
                    "**Verdict:** distillation paid in tokens here: `{}` reached the baseline's final perplexity \
                     with {ratio:.2}x fewer tokens. Counting the teacher's forwards on those tokens too, it used {} the \
                     baseline's compute ({with_teacher:.3e} vs {base_flops:.3e} FLOPs), before the teacher's own training.",
                    c.run,
                    if with_teacher < base_flops { "less than" } else { "more than" },
                )
            }
            Some((ratio, c)) => format!(
                "**Verdict:** distillation did not pay in tokens here: the best distilled run `{}` needed \
                 {:.2}x the baseline's tokens to reach its final perplexity.",
                c.run,
                1.0 / ratio
            ),
            None => "**Verdict:** distillation did not pay here: no distilled run reached the baseline's final \
                     perplexity within the same token budget."
                .into(),
        }
    }
}

/// A Markdown table: a header and rows of cells (`|` in a cell is escaped).
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<const N: usize>(header: [String; N]) -> Self {
        Self {
            header: header.into(),
            rows: Vec::new(),
        }
    }

    fn row<const N: usize>(&mut self, cells: [String; N]) {
        assert_eq!(N, self.header.len(), "a row has one cell per column");
        self.rows.push(cells.into());
    }

    fn render(&self) -> String {
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |", cells.join(" | "))
        };
        let mut out = vec![
            line(&self.header),
            format!("|{}", "---|".repeat(self.header.len())),
        ];
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(tokens: u64, perplexity: f64) -> Point {
        Point {
            step: tokens as usize,
            tokens,
            loss: perplexity.ln(),
            perplexity,
            eval_tokens: 0,
            kl_to_teacher: None,
            top1_agreement: None,
        }
    }

    #[test]
    fn tokens_to_reach_interpolates_in_log_perplexity() {
        let pts = [p(0, 1000.0), p(100, 400.0), p(200, 100.0)];
        // 200 lies halfway between 400 and 100 in log space: ln 400 - ln 200 = ln 200 - ln 100
        assert!((tokens_to_reach(&pts, 200.0).unwrap() - 150.0).abs() < 1e-9);
        assert_eq!(tokens_to_reach(&pts, 400.0), Some(100.0));
        assert_eq!(tokens_to_reach(&pts, 99.0), None);
        assert_eq!(tokens_to_reach(&pts, 2000.0), Some(0.0));
    }

    #[test]
    fn a_markdown_table_escapes_pipes_and_has_one_line_per_row() {
        let mut t = Table::new(["a".to_string(), "b".into()]);
        t.row(["x|y".to_string(), "1".into()]);
        t.row(["z".to_string(), "2".into()]);
        assert_eq!(t.render(), "| a | b |\n|---|---|\n| x\\|y | 1 |\n| z | 2 |");
    }
}
