use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ember_student::{SaveDtype, load_hf, save_hf};

use crate::util::device;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// HuggingFace layout: config.json, model.safetensors, tokenizer.json, generation_config.json
    Hf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Trained student directory (e.g. checkpoints/tiny/model).
    #[arg(long)]
    model: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "hf")]
    format: Format,
    /// Float format of the weights.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Dtype,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let device = device("cpu")?;
    let (model, cfg) = load_hf(&a.model, &device)?;
    let tokenizer = a.model.join("tokenizer.json");
    if !tokenizer.is_file() {
        bail!(
            "{} has no tokenizer.json; an exported model must carry its tokenizer",
            a.model.display()
        );
    }
    match a.format {
        Format::Hf => {
            let dtype = match a.dtype {
                Dtype::F32 => SaveDtype::F32,
                Dtype::Bf16 => SaveDtype::Bf16,
            };
            save_hf(&model, &cfg, &a.out, dtype)?;
            std::fs::copy(&tokenizer, a.out.join("tokenizer.json"))
                .with_context(|| format!("copying {}", tokenizer.display()))?;
        }
    }
    let size = std::fs::metadata(a.out.join("model.safetensors"))?.len();
    println!(
        "exported {} ({} params) to {} ({:.1} MB of weights)",
        a.model.display(),
        cfg.num_params(),
        a.out.display(),
        size as f64 / 1e6
    );
    Ok(())
}
