use std::path::PathBuf;

use clap::Args;
use ember_train::{load_config, train};

use crate::backend::BackendArgs;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training recipe (TOML). See configs/.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any recipe key, e.g. --set train.max_steps=200 --set model.preset=small.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Prepared dataset directory (overrides data.dataset).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Output directory (overrides train.out_dir). A run found there is resumed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimizer steps (overrides train.max_steps).
    #[arg(long)]
    max_steps: Option<usize>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: TrainArgs, distill: bool) -> anyhow::Result<()> {
    let mut overrides = a.overrides;
    if let Some(d) = a.dataset {
        overrides.push(format!("data.dataset={}", toml_str(&d)));
    }
    if let Some(o) = a.out {
        overrides.push(format!("train.out_dir={}", toml_str(&o)));
    }
    if let Some(s) = a.max_steps {
        overrides.push(format!("train.max_steps={s}"));
    }
    let cfg = load_config(a.config.as_deref(), &overrides)?;
    if distill && cfg.teacher.is_none() {
        anyhow::bail!(
            "`ember distill` needs a [teacher] section (logits = <recorded dir>, model = <hf dir>, or url = <served teacher> with [onpolicy]); use `ember train` for cross-entropy only"
        );
    }
    let summary = train(&cfg, &a.backend.device_for(cfg.train.precision)?)?;
    println!(
        "trained {} params for {} steps ({} tokens) at {:.0} tokens/s; validation loss {:.4}, perplexity {:.2} (unigram baseline {:.2}); model in {}",
        summary.num_params,
        summary.steps,
        summary.tokens,
        summary.tokens_per_second,
        summary.validation.loss,
        summary.validation.perplexity,
        summary.unigram_validation_perplexity,
        summary.model_dir.display()
    );
    if let Some(kd) = &summary.validation_kd {
        println!(
            "validation KL to teacher {:.4}, top-1 agreement {:.3}",
            kd.kl, kd.top1_agreement
        );
    }
    if let Some(o) = &summary.onpolicy {
        let num = |k: &str| o[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "on-policy: {} batches, {} generated tokens; sampling {:.0} tok/s, teacher {:.0} tok/s, whole loop {:.0} generated tok/s; max staleness {} steps; trainer waited {:.1} s",
            o["batches"],
            o["generated_tokens"],
            num("sample_tokens_per_second"),
            num("score_tokens_per_second"),
            num("loop_generated_tokens_per_second"),
            o["max_staleness_seen"],
            num("wait_seconds")
        );
    }
    Ok(())
}

fn toml_str(p: &std::path::Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}
