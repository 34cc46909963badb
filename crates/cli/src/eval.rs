use std::path::PathBuf;

use clap::Args;
use ember_data::{DatasetManifest, Split, TokenDataset};
use ember_student::{GgufType, fake_quantize, load_hf};
use ember_train::evaluate;

use crate::backend::BackendArgs;
use crate::util::{check_same_tokenizer, write_json};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Student directory in HF layout (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Prepared dataset directory.
    #[arg(long)]
    dataset: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "validation", value_parser = ["train", "validation"])]
    split: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Evaluate at most this many batches (0 = the whole split).
    #[arg(long, default_value_t = 0)]
    max_batches: usize,
    /// Where to write the JSON report (default: <model>/eval.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Evaluate the weights as a GGUF export of this type would store them (f16, q8_0, q4_0).
    #[arg(long, value_parser = ["f16", "q8_0", "q4_0"])]
    quant: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let device = a.backend.device()?;
    check_same_tokenizer(&a.model, &a.dataset)?;
    let (model, cfg) = load_hf(&a.model, &device)?;
    let model = match a.quant.as_deref() {
        None => model,
        Some(q) => {
            let ty = match q {
                "f16" => GgufType::F16,
                "q8_0" => GgufType::Q8_0,
                _ => GgufType::Q4_0,
            };
            fake_quantize(&model, &cfg, ty, &device)?
        }
    };
    let split = if a.split == "train" {
        Split::Train
    } else {
        Split::Validation
    };
    let data = TokenDataset::open(&a.dataset, split)?;
    if model.vocab_size() < data.manifest.vocab_size {
        anyhow::bail!(
            "model vocabulary {} is smaller than the dataset's {} ({})",
            model.vocab_size(),
            data.manifest.vocab_size,
            a.dataset.display()
        );
    }
    let report = evaluate(&model, &data, a.batch_size, a.max_batches, &device);
    // nothing is written for a NaN model: the run fails instead
    report.check_finite(&format!(
        "{} ({} split of {})",
        a.model.display(),
        a.split,
        a.dataset.display()
    ))?;
    let manifest = DatasetManifest::load(&a.dataset)?;
    let out = a.out.unwrap_or_else(|| a.model.join("eval.json"));
    let json = serde_json::json!({
        "model": a.model, "dataset": a.dataset, "split": a.split, "quant": a.quant,
        "loss": report.loss, "perplexity": report.perplexity, "tokens": report.tokens,
        "sequences": report.sequences,
        "unigram_perplexity": manifest.unigram.validation_perplexity,
    });
    write_json(&out, &json)?;
    println!(
        "{} loss {:.4}  perplexity {:.2}  (unigram baseline {:.2}, {} tokens) -> {}",
        a.split,
        report.loss,
        report.perplexity,
        manifest.unigram.validation_perplexity,
        report.tokens,
        out.display()
    );
    Ok(())
}
