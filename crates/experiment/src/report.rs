//! The report directory: `report.json`, `points.csv`, `ppl_vs_tokens.svg`,
//! `ppl_vs_flops.svg` and `README.md` (the summary with the token ratios).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ember_train::{KdConfig, KdLoss, TailMode};
use serde::{Deserialize, Serialize};

use crate::flops::ModelShape;
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
        write(&out.join("points.csv"), self.csv())?;
        let train_fpt = self.student_shape.train_flops_per_token();
        let teacher_fpt = self.teacher_shape.forward_flops_per_token();
        let series = |flops: bool| -> Vec<Series> {
            let mut s: Vec<Series> = self
                .runs
                .iter()
                .map(|r| Series {
                    name: r.name.clone(),
                    dashed: false,
                    points: r
                        .points
                        .iter()
                        .map(|p| {
                            let x = p.tokens as f64 * if flops { train_fpt } else { 1.0 };
                            (x, p.perplexity)
                        })
                        .collect(),
                })
                .collect();
            if flops {
                // distilled runs again, with the teacher's recording forwards added
                for r in self.runs.iter().filter(|r| r.distilled) {
                    s.push(Series {
                        name: format!("{} + teacher", r.name),
                        dashed: true,
                        points: r
                            .points
                            .iter()
                            .map(|p| (p.tokens as f64 * (train_fpt + teacher_fpt), p.perplexity))
                            .collect(),
                    });
                }
            }
            s
        };
        write(
            &out.join("ppl_vs_tokens.svg"),
            svg_plot(
                "Validation perplexity vs training tokens",
                "student training tokens",
                &series(false),
                Some(self.baseline_final_perplexity),
            ),
        )?;
        write(
            &out.join("ppl_vs_flops.svg"),
            svg_plot(
                "Validation perplexity vs compute",
                "FLOPs (student training; dashed: + teacher forwards)",
                &series(true),
                Some(self.baseline_final_perplexity),
            ),
        )?;
        write(&out.join("README.md"), self.markdown())?;
        Ok(())
    }

    fn csv(&self) -> String {
        let train_fpt = self.student_shape.train_flops_per_token();
        let teacher_fpt = self.teacher_shape.forward_flops_per_token();
        let mut s = String::from(
            "run,distilled,top_k,step,tokens,student_flops,teacher_forward_flops,validation_loss,validation_perplexity,eval_tokens,kl_to_teacher,top1_agreement\n",
        );
        let opt = |x: Option<f64>| x.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.runs {
            for p in &r.points {
                let teacher = if r.distilled {
                    format!("{:.6e}", p.tokens as f64 * teacher_fpt)
                } else {
                    "0".into()
                };
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{:.6e},{},{:.6},{:.4},{},{},{}",
                    r.name,
                    r.distilled,
                    r.top_k.map(|k| k.to_string()).unwrap_or_default(),
                    p.step,
                    p.tokens,
                    p.tokens as f64 * train_fpt,
                    teacher,
                    p.loss,
                    p.perplexity,
                    p.eval_tokens,
                    opt(p.kl_to_teacher),
                    opt(p.top1_agreement)
                );
            }
        }
        s
    }

    fn markdown(&self) -> String {
        let st = &self.student_shape;
        let te = &self.teacher_shape;
        let train_fpt = st.train_flops_per_token();
        let teacher_fpt = te.forward_flops_per_token();
        let n_kd = self.runs.iter().filter(|r| r.distilled).count().max(1);
        let mut m = String::new();
        let _ = writeln!(
            m,
            "# Train the trainer: distilled vs from-scratch students\n"
        );
        let _ = writeln!(
            m,
            "Dataset `{}`; every student run sees the same {} training tokens (one epoch over the same rows, \
             same seed, schedule and shape); validation perplexity on real text ({} tokens at the last point).\n",
            self.config.experiment.dataset.display(),
            self.baseline_tokens,
            self.runs[0].points.last().map_or(0, |p| p.eval_tokens)
        );
        let _ = writeln!(m, "## Result\n");
        let _ = writeln!(
            m,
            "Baseline `{}` (cross-entropy from scratch) ends at perplexity **{:.2}** after {} tokens.\n",
            self.baseline, self.baseline_final_perplexity, self.baseline_tokens
        );
        let _ = writeln!(
            m,
            "| run | loss | top-k | final ppl | tokens to reach {:.2} | token ratio | student FLOPs to reach it | + teacher forwards |",
            self.baseline_final_perplexity
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        let base = self.runs.iter().find(|r| !r.distilled).expect("baseline");
        let _ = writeln!(
            m,
            "| {} | cross-entropy | - | {:.2} | {} | 1.00x | {:.3e} | - |",
            base.name,
            self.baseline_final_perplexity,
            self.baseline_tokens,
            self.baseline_tokens as f64 * train_fpt
        );
        for c in &self.comparisons {
            let r = self.runs.iter().find(|r| r.name == c.run).expect("run");
            let f = |x: Option<f64>, fmt: &dyn Fn(f64) -> String| {
                x.map(fmt).unwrap_or("not reached".into())
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} |",
                r.name,
                r.loss.clone().unwrap_or_default(),
                r.top_k.map(|k| k.to_string()).unwrap_or_default(),
                c.final_perplexity,
                f(c.tokens_to_baseline_quality, &|t| format!("{t:.0}")),
                f(c.token_ratio, &|x| format!("{x:.2}x")),
                f(c.student_flops_to_baseline_quality, &|x| format!("{x:.3e}")),
                f(c.with_teacher_flops_to_baseline_quality, &|x| format!(
                    "{x:.3e}"
                )),
            );
        }
        let _ = writeln!(m);
        let best = self
            .comparisons
            .iter()
            .filter_map(|c| c.token_ratio.map(|r| (r, c)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((ratio, c)) if ratio > 1.0 => {
                let _ = writeln!(
                    m,
                    "**Verdict:** distillation paid in tokens here: `{}` reached the baseline's final perplexity \
                     with {ratio:.2}x fewer tokens. Counting the teacher's forwards on those tokens too, it used {} the \
                     baseline's compute ({:.3e} vs {:.3e} FLOPs), before the teacher's own training.\n",
                    c.run,
                    if c.with_teacher_flops_to_baseline_quality
                        .unwrap_or(f64::INFINITY)
                        < self.baseline_tokens as f64 * train_fpt
                    {
                        "less than"
                    } else {
                        "more than"
                    },
                    c.with_teacher_flops_to_baseline_quality.unwrap_or(f64::NAN),
                    self.baseline_tokens as f64 * train_fpt
                );
            }
            Some((ratio, c)) => {
                let _ = writeln!(
                    m,
                    "**Verdict:** distillation did not pay in tokens here: the best distilled run `{}` needed \
                     {:.2}x the baseline's tokens to reach its final perplexity.\n",
                    c.run,
                    1.0 / ratio
                );
            }
            None => {
                let _ = writeln!(
                    m,
                    "**Verdict:** distillation did not pay here: no distilled run reached the baseline's final \
                     perplexity within the same token budget.\n"
                );
            }
        }
        let _ = writeln!(m, "![perplexity vs tokens](ppl_vs_tokens.svg)\n");
        let _ = writeln!(m, "![perplexity vs FLOPs](ppl_vs_flops.svg)\n");
        let _ = writeln!(m, "## Compute accounting\n");
        let _ = writeln!(
            m,
            "Forward FLOPs per token = 2 x (parameters in matrix products) + 2 x layers x context x (heads x head_dim); \
             training = 3 x forward. The input embedding lookup is not a matrix product (a tied table is counted once, \
             as the LM head). Norms, activations, softmax and the optimizer are left out.\n"
        );
        let _ = writeln!(
            m,
            "| model | params | matmul params | layers | attn dim | context | forward FLOPs/token | train FLOPs/token |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for (name, s) in [("student", st), ("teacher", te)] {
            let _ = writeln!(
                m,
                "| {name} | {} | {} | {} | {} | {} | {:.4e} | {:.4e} |",
                s.params,
                s.matmul_params,
                s.layers,
                s.attn_dim,
                s.context,
                s.forward_flops_per_token(),
                s.train_flops_per_token()
            );
        }
        if te.counts_all_experts {
            let _ = writeln!(
                m,
                "\nThe teacher is a mixture of experts and its count includes every expert: its FLOPs are an upper bound."
            );
        }
        let _ = writeln!(m);
        let _ = writeln!(m, "Teacher `{}`:", self.teacher_dir.display());
        match &self.teacher_training {
            Some(t) => {
                let _ = writeln!(
                    m,
                    "- training (cross-entropy, by Ember): {} tokens x {:.4e} = **{:.3e} FLOPs** (validation perplexity {:.2}); \
                     a one-off cost, shared by every student distilled from it.",
                    t.tokens,
                    te.train_flops_per_token(),
                    t.tokens as f64 * te.train_flops_per_token(),
                    t.validation_perplexity
                );
            }
            None => {
                let _ = writeln!(
                    m,
                    "- training: unknown (an existing checkpoint without Ember's summary.json)."
                );
            }
        }
        if let Some(r) = &self.recording {
            let total = r.train_positions as f64 * teacher_fpt;
            let _ = writeln!(
                m,
                "- recording its top-{} on the {} training positions: {:.3e} FLOPs, stored at {:.1} bytes/token; \
                 shared by the {n_kd} distilled runs here ({:.3e} each when amortised). Validation logits are recorded \
                 too, for the KL/agreement columns only.",
                r.k,
                r.train_positions,
                total,
                r.bytes_per_token,
                total / n_kd as f64
            );
        }
        let _ = writeln!(m, "\n## Every validation point\n");
        let _ = writeln!(
            m,
            "| run | step | tokens | ppl | KL to teacher | top-1 agreement |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        for r in &self.runs {
            for p in &r.points {
                let o = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or("-".into());
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {:.2} | {} | {} |",
                    r.name,
                    p.step,
                    p.tokens,
                    p.perplexity,
                    o(p.kl_to_teacher),
                    o(p.top1_agreement)
                );
            }
        }
        let _ = writeln!(
            m,
            "\nIntermediate points are measured on {} validation batches (0 = all), the last point of every run on the \
             whole validation split. Files: `report.json`, `points.csv`, `runs/<name>/` (metrics, checkpoints, model), \
             `logits/` (the recording), `experiment.toml` (the resolved config).",
            self.config.experiment.eval_batches
        );
        m
    }
}

/// One line of a plot.
struct Series {
    name: String,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// A line plot, linear x from 0, log y; a horizontal line at `target`.
fn svg_plot(title: &str, xlabel: &str, series: &[Series], target: Option<f64>) -> String {
    const W: f64 = 760.0;
    const H: f64 = 460.0;
    let (l, r, t, b) = (80.0, 220.0, 40.0, 60.0);
    let (pw, ph) = (W - l - r, H - t - b);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let xmax = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let ys = all
        .iter()
        .map(|p| p.1)
        .filter(|y| y.is_finite() && *y > 0.0);
    let mut ymin = ys.clone().fold(f64::INFINITY, f64::min);
    let mut ymax = ys.fold(0.0, f64::max);
    if let Some(tg) = target {
        ymin = ymin.min(tg);
        ymax = ymax.max(tg);
    }
    if !ymin.is_finite() {
        (ymin, ymax) = (1.0, 10.0);
    }
    let (lmin, lmax) = ((ymin * 0.9).ln(), (ymax * 1.1).ln());
    let px = |x: f64| l + x / xmax * pw;
    let py = |y: f64| t + (lmax - y.max(1e-9).ln()) / (lmax - lmin) * ph;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        l + pw / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    // x ticks: 5 even steps
    for i in 0..=5 {
        let x = xmax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="black"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"#,
            px(x),
            t + ph,
            t + ph + 5.0,
            t + ph + 20.0,
            si(x)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        H - 15.0,
        esc(xlabel)
    );
    // y ticks: 1-2-5 steps inside the range (log scale)
    let mut dec = 10f64.powf(ymin.log10().floor() - 1.0);
    while dec < ymax * 10.0 {
        for m in [1.0, 2.0, 5.0] {
            let y = dec * m;
            if y >= ymin * 0.9 && y <= ymax * 1.1 {
                let _ = writeln!(
                    s,
                    r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
                    py(y),
                    l + pw,
                    l - 6.0,
                    py(y) + 4.0,
                    y
                );
            }
        }
        dec *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">validation perplexity (log scale)</text>"#,
        t + ph / 2.0
    );
    if let Some(tg) = target {
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#555" stroke-dasharray="2,3"/><text x="{2}" y="{3}" fill="#555">baseline final {tg:.1}</text>"##,
            py(tg),
            l + pw,
            l + 4.0,
            py(tg) - 4.0
        );
    }
    for (i, ser) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if ser.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').expect("x,y");
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"/>"#);
        }
        let ly = t + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{ly}" x2="{1}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{2}" y="{3}">{4}</text>"#,
            l + pw + 12.0,
            l + pw + 36.0,
            l + pw + 42.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1.2M, 350k, 4.1e12-style tick labels.
fn si(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e12 {
        format!("{:.2e}", x)
    } else if a >= 1e9 {
        format!("{:.1}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}k", x / 1e3)
    } else {
        format!("{x:.0}")
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
    fn the_plot_is_well_formed_svg_with_one_line_per_series() {
        let series = vec![
            Series {
                name: "ce".into(),
                dashed: false,
                points: vec![(0.0, 800.0), (1e5, 300.0)],
            },
            Series {
                name: "kd <k=8>".into(),
                dashed: true,
                points: vec![(0.0, 800.0), (1e5, 250.0)],
            },
        ];
        let svg = svg_plot("t", "tokens", &series, Some(300.0));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("kd &lt;k=8&gt;"));
        assert!(!svg.contains("NaN"));
    }
}
