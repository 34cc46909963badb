use std::path::PathBuf;

use clap::Subcommand;
use ember_data::{TrainTokenizerConfig, train_tokenizer};

#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on text files and write a standard tokenizer.json.
    Train {
        /// Text files to learn from.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write tokenizer.json.
        #[arg(long)]
        out: PathBuf,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Minimum frequency of a merge.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Read at most this many bytes of input (0 = all).
        #[arg(long, default_value_t = 0)]
        max_bytes: u64,
    },
}

pub fn run(cmd: TokenizerCommand) -> anyhow::Result<()> {
    match cmd {
        TokenizerCommand::Train {
            files,
            out,
            vocab_size,
            min_frequency,
            max_bytes,
        } => {
            let cfg = TrainTokenizerConfig {
                files,
                vocab_size,
                min_frequency,
                max_bytes,
                ..Default::default()
            };
            let info = train_tokenizer(&cfg, &out)?;
            println!(
                "wrote {} (vocab {}, sha256 {})",
                out.display(),
                info.vocab_size,
                &info.sha256[..16]
            );
            Ok(())
        }
    }
}
