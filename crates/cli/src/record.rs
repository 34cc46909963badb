use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::DType;
use clap::{Args, ValueEnum};
use ember_data::{Split, load_tokenizer, tokenizer_hash};
use ember_teacher::{
    LocalTeacher, LogitSource, Protocol, RecordConfig, RemoteTeacher, load_teacher, record,
};

use crate::backend::BackendArgs;
use crate::logits::{CodecArgs, print_codec_error};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Remote {
    /// vLLM's OpenAI-compatible /v1/completions with prompt_logprobs
    Vllm,
    /// SGLang's /generate with input_top_logprobs
    Sglang,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ComputeDtype {
    F32,
    Bf16,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Local teacher: HF directory (config.json + model.safetensors or a sharded index).
    #[arg(long, required_unless_present = "remote")]
    teacher: Option<PathBuf>,
    /// Remote teacher protocol (with --url and --model) instead of a local directory.
    #[arg(long, value_enum, requires_all = ["url", "model"], conflicts_with = "teacher")]
    remote: Option<Remote>,
    /// Base URL of the serving engine, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    url: Option<String>,
    /// Served model name.
    #[arg(long)]
    model: Option<String>,
    /// Output-layer size of the remote teacher, when known (checked against the dataset).
    #[arg(long)]
    remote_vocab_size: Option<usize>,
    /// Prepared dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// Split to record.
    #[arg(long, default_value = "train", value_parser = ["train", "validation"])]
    split: String,
    /// Log-probabilities kept per position (v2: at most).
    #[arg(long, default_value_t = 32)]
    top_k: usize,
    /// Softmax temperature of the recorded distribution (remote teachers: 1 only).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[command(flatten)]
    codec: CodecArgs,
    /// Output directory (resumes if it holds a partial recording of the same settings).
    #[arg(long)]
    out: PathBuf,
    /// Sequences per teacher forward.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Sequences per Arrow shard (the unit of resumption).
    #[arg(long, default_value_t = 256)]
    shard_rows: usize,
    /// Record only the first N sequences of the split.
    #[arg(long)]
    max_rows: Option<usize>,
    /// Compute dtype of a local teacher (bf16 halves memory).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: ComputeDtype,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(a: RecordArgs) -> anyhow::Result<()> {
    let cfg = RecordConfig {
        data: a.data.clone(),
        split: if a.split == "train" {
            Split::Train
        } else {
            Split::Validation
        },
        out: a.out.clone(),
        k: a.top_k,
        temperature: a.temperature,
        batch_size: a.batch_size,
        shard_rows: a.shard_rows,
        max_rows: a.max_rows,
        codec: a.codec.codec(),
    };
    let mut source: Box<dyn LogitSource> = match (&a.teacher, a.remote) {
        (Some(dir), None) => {
            let device = a.backend.device()?;
            let dtype = match a.dtype {
                ComputeDtype::F32 => DType::F32,
                ComputeDtype::Bf16 => DType::BF16,
            };
            let teacher = load_teacher(dir, &device, dtype)?;
            let tok = dir.join("tokenizer.json");
            let tokenizer_sha256 = if tok.is_file() {
                Some(tokenizer_hash(&load_tokenizer(&tok)?, &tok)?.sha256)
            } else {
                None
            };
            Box::new(LocalTeacher {
                teacher,
                dir: dir.clone(),
                tokenizer_sha256,
                device,
            })
        }
        (None, Some(remote)) => {
            let protocol = match remote {
                Remote::Vllm => Protocol::Vllm,
                Remote::Sglang => Protocol::Sglang,
            };
            let mut t = RemoteTeacher::new(
                a.url.as_deref().unwrap_or_default(),
                a.model.as_deref().unwrap_or_default(),
                protocol,
            );
            t.vocab_size = a.remote_vocab_size;
            Box::new(t)
        }
        _ => bail!("give either --teacher DIR or --remote vllm|sglang --url URL --model NAME"),
    };
    let m = record(source.as_mut(), &cfg)?;
    let d = &m.details;
    println!(
        "recorded {} positions ({} shards) of {} at k={}: {:.1} bytes/token; {:.0} tokens/s this run -> {}",
        m.positions,
        m.shards.len(),
        m.meta.teacher,
        m.meta.k,
        m.bytes_per_token,
        d["tokens_per_second_this_run"].as_f64().unwrap_or(0.0),
        a.out.display()
    );
    if let Some(e) = d.get("codec_error_this_run").filter(|e| !e.is_null()) {
        print_codec_error("positions recorded this run", e);
    }
    Ok(())
}
