use std::path::PathBuf;

use clap::{Args, Subcommand};
use ember_experiment::{ExperimentConfig, run_train_the_trainer};

use crate::backend::BackendArgs;

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Distilled vs from-scratch students at equal tokens: teacher (trained here or given by
    /// path), one recording of its logits, the student with cross-entropy and distilled; writes
    /// report.json, points.csv, ppl_vs_tokens.{svg,png}, ppl_vs_flops.{svg,png} and README.md.
    /// Re-running resumes: finished runs and recordings are reused.
    TrainTheTrainer(TttArgs),
}

#[derive(Debug, Args)]
pub struct TttArgs {
    /// Experiment config (TOML), e.g. configs/experiments/small.toml.
    #[arg(long)]
    config: PathBuf,
    /// Report directory (overrides experiment.out_dir).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(cmd: ExperimentCommand) -> anyhow::Result<()> {
    match cmd {
        ExperimentCommand::TrainTheTrainer(a) => {
            let mut cfg = ExperimentConfig::load(&a.config)?;
            if let Some(out) = a.out {
                cfg.experiment.out_dir = out;
            }
            let device = a.backend.device_for(cfg.train.precision)?;
            let report = run_train_the_trainer(&cfg, &device)?;
            println!(
                "baseline {} final perplexity {:.2} after {} tokens",
                report.baseline, report.baseline_final_perplexity, report.baseline_tokens
            );
            for c in &report.comparisons {
                println!(
                    "{}: final perplexity {:.2}; token ratio to reach the baseline: {}",
                    c.run,
                    c.final_perplexity,
                    c.token_ratio
                        .map(|r| format!("{r:.2}x"))
                        .unwrap_or_else(|| "not reached".into())
                );
            }
            println!(
                "report: {}",
                cfg.experiment.out_dir.join("README.md").display()
            );
            Ok(())
        }
    }
}
