use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use ember_data::{
    CompactCodec, EntryCoder, IpcCompression, LogitsCodec, LogitsManifest, convert_logits,
};
use ember_teacher::{
    CompressionConfig, ExportConfig, QuantizationBin, Term, TermDtype, export_distillkit,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// v1: k entries per position, Int32 ids and Float32 log-probabilities (8 bytes per entry)
    V1,
    /// v2: adaptive k, ids as byte planes, log-probabilities quantized relative to the top
    /// entry, compressed Arrow buffers (README, "Teacher logits")
    V2,
    /// v3: v2 with ids and gaps rANS-coded against per-shard frequency tables (smallest)
    V3,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Compression {
    None,
    Lz4,
    Zstd,
}

/// The logits format of written shards.
#[derive(Debug, Args)]
pub struct CodecArgs {
    /// Logits format of the shards.
    #[arg(long, value_enum, default_value = "v1")]
    format: Format,
    /// v2/v3: keep a position's entries until their probability mass reaches this (1: always k).
    #[arg(long, default_value_t = CompactCodec::default().mass)]
    mass: f32,
    /// v2/v3: quantization step of log-probabilities relative to the top entry, in nats.
    #[arg(long, default_value_t = CompactCodec::default().step)]
    logprob_step: f32,
    /// v2/v3: Arrow IPC buffer compression.
    #[arg(long, value_enum, default_value = "zstd")]
    compression: Compression,
}

impl CodecArgs {
    pub fn codec(&self) -> LogitsCodec {
        match self.format {
            Format::V1 => LogitsCodec::Full,
            Format::V2 | Format::V3 => LogitsCodec::Compact(CompactCodec {
                mass: self.mass,
                step: self.logprob_step,
                compression: match self.compression {
                    Compression::None => IpcCompression::None,
                    Compression::Lz4 => IpcCompression::Lz4,
                    Compression::Zstd => IpcCompression::Zstd,
                },
                coder: match self.format {
                    Format::V3 => EntryCoder::Rans,
                    _ => EntryCoder::Planes,
                },
            }),
        }
    }
}

/// One line on the compact (v2/v3) encoding error (`CodecStats::summary`).
pub fn print_codec_error(what: &str, e: &serde_json::Value) {
    let f = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "compact encoding, {} {what}: {:.1} entries/position (mass dropped {:.2e}); KL(decoded || full precision) mean {:.2e}, p99 {:.2e}; tail error mean {:.2e}, max {:.2e}",
        e["positions"],
        f("mean_entries"),
        f("dropped_mass_mean"),
        f("kl_mean"),
        f("kl_p99"),
        f("tail_error_mean"),
        f("tail_error_max"),
    );
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DistillkitPreset {
    /// DistillKit's recommended capture: 16 exact bf16 values, a degree-4 + sqrt polynomial
    Recommended,
    /// DistillKit's budget pick: 1 exact bf16 value, a linear + sqrt polynomial
    Budget,
    /// every value exact in float32
    Lossless,
}

#[derive(Debug, Subcommand)]
pub enum LogitsCommand {
    /// Re-encode a recording in another format (v1 <-> v2, other v2 settings, a smaller k),
    /// reporting bytes/token and the compact encoding error.
    Convert {
        /// Source logits directory.
        #[arg(long)]
        from: PathBuf,
        /// Output logits directory.
        #[arg(long)]
        out: PathBuf,
        /// Entries per position kept (v2: at most); default the recording's k.
        #[arg(long)]
        top_k: Option<usize>,
        #[command(flatten)]
        codec: CodecArgs,
    },
    /// Write a recording as a DistillKit capture (compression_config.yaml + data_N.parquet),
    /// for DistillKit and open-instruct users.
    ExportDistillkit {
        /// Source logits directory.
        #[arg(long)]
        from: PathBuf,
        /// Output capture directory.
        #[arg(long)]
        out: PathBuf,
        /// Compression settings (DistillKit's own presets); `--config` overrides.
        #[arg(long, value_enum, default_value = "recommended")]
        preset: DistillkitPreset,
        /// A DistillKit compression_config.yaml to use instead of a preset (`d` and `k` as given).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Entries per position (default: the recording's k).
        #[arg(long)]
        top_k: Option<usize>,
        /// Token id appended to every row (DistillKit appends its tokenizer's pad token).
        #[arg(long, default_value_t = 0)]
        pad_token_id: u64,
        /// Rows per Parquet file.
        #[arg(long, default_value_t = 1024)]
        rows_per_file: usize,
    },
}

fn preset(p: DistillkitPreset, d: usize, k: usize) -> CompressionConfig {
    let (exact_k, exact_dtype, terms) = match p {
        DistillkitPreset::Recommended => (
            16.min(k),
            TermDtype::Bfloat16,
            vec![
                Term::Power(0),
                Term::Power(1),
                Term::Power(2),
                Term::Power(3),
                Term::Power(4),
                Term::Special("sqrt".into()),
            ],
        ),
        DistillkitPreset::Budget => (
            1,
            TermDtype::Bfloat16,
            vec![Term::Power(0), Term::Power(1), Term::Special("sqrt".into())],
        ),
        DistillkitPreset::Lossless => (k, TermDtype::Float32, vec![]),
    };
    CompressionConfig {
        d,
        k,
        exact_k,
        exact_dtype,
        polynomial_terms: (exact_k < k).then_some(terms),
        term_dtype: TermDtype::Float32,
        residual_bins: Vec::<QuantizationBin>::new(),
        delta_encoding: false,
        error_diffusion: false,
        normalize_t: false,
    }
}

pub fn run(cmd: LogitsCommand) -> anyhow::Result<()> {
    match cmd {
        LogitsCommand::Convert {
            from,
            out,
            top_k,
            codec,
        } => {
            let k = match top_k {
                Some(k) => k,
                None => LogitsManifest::load(&from)?.meta.k,
            };
            let (m, _) = convert_logits(&from, &out, codec.codec(), k)?;
            println!(
                "converted {} positions to format v{} at k={}: {:.1} bytes/token (source {:.1}) -> {}",
                m.positions,
                m.format_version,
                m.meta.k,
                m.bytes_per_token,
                m.details["source_bytes_per_token"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                out.display()
            );
            if let Some(e) = m.details.get("codec_error") {
                print_codec_error("positions", e);
            }
            Ok(())
        }
        LogitsCommand::ExportDistillkit {
            from,
            out,
            preset: p,
            config,
            top_k,
            pad_token_id,
            rows_per_file,
        } => {
            let m = LogitsManifest::load(&from)?;
            let compression = match config {
                Some(path) => CompressionConfig::load(&path)?,
                None => preset(p, m.meta.vocab_size, top_k.unwrap_or(m.meta.k)),
            };
            let r = export_distillkit(&ExportConfig {
                logits: from,
                out: out.clone(),
                compression,
                pad_token_id,
                rows_per_file,
            })?;
            println!(
                "exported {} rows ({} positions, {} padded) into {} Parquet files: {:.1} bytes/token -> {}",
                r.rows,
                r.positions,
                r.padded_positions,
                r.files,
                r.bytes as f64 / r.positions.max(1) as f64,
                out.display()
            );
            Ok(())
        }
    }
}
