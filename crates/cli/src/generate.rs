use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ember_data::load_tokenizer;
use ember_student::{GenerateConfig, generate, load_hf};

use crate::backend::BackendArgs;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Student directory in HF layout with its tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "The")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let device = a.backend.device()?;
    let (model, cfg) = load_hf(&a.model, &device)?;
    let tok_path = a.model.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tok_path)?;
    let prompt = tokenizer
        .encode(a.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("encoding the prompt")?;
    let mut ids: Vec<u32> = prompt.get_ids().to_vec();
    if ids.is_empty() {
        ids.push(cfg.bos_token_id);
    }
    let gen_cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_token: Some(cfg.eos_token_id),
    };
    let start = std::time::Instant::now();
    let new = generate(&model, &ids, &gen_cfg, &device);
    let secs = start.elapsed().as_secs_f64();
    let text = tokenizer
        .decode(&new, true)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("decoding")?;
    println!("{}{}", a.prompt, text);
    eprintln!(
        "[{} tokens in {:.2}s, {:.1} tokens/s]",
        new.len(),
        secs,
        new.len() as f64 / secs
    );
    Ok(())
}
