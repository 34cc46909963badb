use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ember_student::{GgufType, SaveDtype, load_hf, save_gguf, save_hf};

use burn::prelude::Device;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// HuggingFace layout: config.json, model.safetensors, tokenizer.json, generation_config.json
    Hf,
    /// One GGUF file for llama.cpp (`--quant f16|q8_0|q4_0`)
    Gguf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Quant {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
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
    /// GGUF weight format.
    #[arg(long, value_enum, default_value = "q8_0")]
    quant: Quant,
    /// Output directory (hf) or file (gguf).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
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
        Format::Gguf => {
            let ty = match a.quant {
                Quant::F16 => GgufType::F16,
                Quant::Q8_0 => GgufType::Q8_0,
                Quant::Q4_0 => GgufType::Q4_0,
            };
            let name = a
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            save_gguf(&model, &cfg, &tokenizer, &a.out, ty, &name)?;
        }
    }
    let weights = if a.out.is_dir() {
        a.out.join("model.safetensors")
    } else {
        a.out.clone()
    };
    let size = std::fs::metadata(weights)?.len();
    println!(
        "exported {} ({} params) to {} ({:.1} MB of weights)",
        a.model.display(),
        cfg.num_params(),
        a.out.display(),
        size as f64 / 1e6
    );
    Ok(())
}
