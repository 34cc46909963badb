use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ember_data::{ChatTemplate, load_tokenizer, read_chat_jsonl};
use ember_student::load_hf;
use ember_train::evaluate_chat;

use crate::backend::BackendArgs;
use crate::util::write_json;

#[derive(Debug, Args)]
pub struct EvalChatArgs {
    /// Student directory in HF layout (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Held-out records ({"instruction", "answer"[, "id", "category"]} JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Chat template the model was tuned with: alpaca or chatml.
    #[arg(long, default_value = "alpaca")]
    template: String,
    /// Longest generated answer, in tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Evaluate only the first N records.
    #[arg(long)]
    limit: Option<usize>,
    /// Where to write the JSON report (default: <model>/eval_chat.json).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: EvalChatArgs) -> anyhow::Result<()> {
    let template = ChatTemplate::parse(&a.template)
        .with_context(|| format!("unknown template {:?}; use alpaca or chatml", a.template))?;
    let device = a.backend.device()?;
    let tok_path = a.model.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tok_path)?;
    let (model, cfg) = load_hf(&a.model, &device)?;
    let eos = cfg.eos_token_id;
    let mut records = read_chat_jsonl(&a.data)?;
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    let report = evaluate_chat(
        &model,
        &tokenizer,
        template,
        &records,
        eos,
        a.max_new_tokens,
        &device,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    let out = a.out.unwrap_or_else(|| a.model.join("eval_chat.json"));
    write_json(&out, &report)?;
    println!(
        "{} records: exact match {:.3}, JSON match {:.3}, valid JSON {:.3}; answer loss {:.4} (ppl {:.2}); report {}",
        report.overall.records,
        report.overall.exact_match,
        report.overall.json_match,
        report.overall.valid_json,
        report.answer_loss,
        report.answer_perplexity,
        out.display()
    );
    for (cat, s) in &report.per_category {
        println!(
            "  {cat:<20} {:>4} records  exact {:.3}  json {:.3}",
            s.records, s.exact_match, s.json_match
        );
    }
    Ok(())
}
