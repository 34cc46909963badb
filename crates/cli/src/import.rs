use std::path::PathBuf;

use clap::Subcommand;
use ember_data::{load_tokenizer, tokenizer_hash};
use ember_teacher::{ImportConfig, import_distillkit};

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Convert a DistillKit capture (compression_config.yaml + data_*.parquet) into Ember
    /// logits shards. Capture rows are cut into consecutive windows of --seq-len positions.
    Distillkit {
        /// Capture directory.
        #[arg(long)]
        capture: PathBuf,
        /// The teacher's tokenizer.json (its hash is recorded and checked by the trainer).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Positions per Ember row.
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// Keep only the k most likely entries (default: all of the capture's k).
        #[arg(long)]
        top_k: Option<usize>,
        /// Teacher name to record.
        #[arg(long, default_value = "distillkit-capture")]
        teacher: String,
        /// Rows per Arrow shard.
        #[arg(long, default_value_t = 256)]
        shard_rows: usize,
        /// Output logits directory.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: ImportCommand) -> anyhow::Result<()> {
    match cmd {
        ImportCommand::Distillkit {
            capture,
            tokenizer,
            seq_len,
            top_k,
            teacher,
            shard_rows,
            out,
        } => {
            let info = tokenizer_hash(&load_tokenizer(&tokenizer)?, &tokenizer)?;
            let cfg = ImportConfig {
                capture,
                out: out.clone(),
                seq_len,
                top_k,
                teacher,
                tokenizer_sha256: info.sha256,
                shard_rows,
            };
            let m = import_distillkit(&cfg)?;
            if m.meta.vocab_size < info.vocab_size {
                anyhow::bail!(
                    "capture vocabulary d={} is smaller than the tokenizer's {}",
                    m.meta.vocab_size,
                    info.vocab_size
                );
            }
            println!(
                "imported {} positions ({} rows of {seq_len}, k={}) into {}: {:.1} bytes/token",
                m.positions,
                m.shards.iter().map(|s| s.rows).sum::<usize>(),
                m.meta.k,
                out.display(),
                m.bytes_per_token
            );
            Ok(())
        }
    }
}
