//! `ember data prepare`: text/JSONL -> packed fixed-length token sequences in Arrow IPC shards.
//!
//! Streaming: input is read passage by passage, tokenized in small batches and packed
//! into rows as it goes; only the shard being filled is held in memory. Deterministic:
//! each passage goes to train or validation by a hash of (seed, file, passage index).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Int32Array};
use arrow::datatypes::{DataType, Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::{
    DataError, IpcCompression, Split, TOKENS_FORMAT_VERSION, load_tokenizer, read_manifest,
    tokenizer_hash, write_atomic, write_ipc_atomic,
};

/// Settings for `ember data prepare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareConfig {
    /// Input `.txt` / `.jsonl` files, or directories searched (non-recursively) for them.
    pub inputs: Vec<PathBuf>,
    /// Any HF `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Tokens per packed row.
    pub seq_len: usize,
    /// Fraction of passages sent to the validation split.
    pub val_fraction: f64,
    /// Seed of the train/validation assignment.
    pub seed: u64,
    /// Rows per Arrow shard.
    pub shard_rows: usize,
    /// Field holding the text in JSONL records.
    pub text_field: String,
    /// Token appended after every document; defaults to `<|endoftext|>`, `</s>` or `<eos>`, whichever exists.
    pub eos_token: Option<String>,
    /// Plain-text passages are cut at the first blank line after this many bytes
    /// (or at a line end after twice as many, for texts without blank lines).
    pub passage_bytes: usize,
}

impl Default for PrepareConfig {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            tokenizer: PathBuf::new(),
            out: PathBuf::new(),
            seq_len: 256,
            val_fraction: 0.05,
            seed: 42,
            shard_rows: 4096,
            text_field: "text".into(),
            eos_token: None,
            passage_bytes: 4096,
        }
    }
}

/// One Arrow shard of a split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub rows: usize,
}

/// Cross-entropy of a unigram model (token frequencies of the train split, add-one
/// smoothed) on the validation targets: the baseline a language model must beat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnigramBaseline {
    pub validation_cross_entropy: f64,
    pub validation_perplexity: f64,
    pub validation_targets: u64,
}

/// `dataset.json`: everything needed to read and trust a prepared dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub format: String,
    pub format_version: u32,
    pub seq_len: usize,
    pub vocab_size: usize,
    pub tokenizer_sha256: String,
    /// Tokenizer copy inside the dataset directory.
    pub tokenizer_file: String,
    pub eos_token_id: u32,
    pub splits: BTreeMap<String, Vec<ShardInfo>>,
    pub train_tokens: u64,
    pub validation_tokens: u64,
    /// Tokens left over at the end of each split that did not fill a row.
    pub dropped_tokens: u64,
    pub unigram: UnigramBaseline,
    pub config: PrepareConfig,
    /// Instruction datasets (`ember data prepare-chat`): one record per row, a `labels`
    /// column with -100 on the prompt and the padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::ChatInfo>,
}

impl DatasetManifest {
    pub const FILE: &'static str = "dataset.json";

    /// Read `<dir>/dataset.json`.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        read_manifest(
            &dir.join(Self::FILE),
            "ember-tokens",
            &[TOKENS_FORMAT_VERSION],
            |m: &Self| (m.format.as_str(), m.format_version),
        )
    }

    /// Rows in a split.
    pub fn rows(&self, split: Split) -> usize {
        self.splits
            .get(split.name())
            .map(|s| s.iter().map(|s| s.rows).sum())
            .unwrap_or(0)
    }
}

/// Summary returned by [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub manifest: DatasetManifest,
    pub input_bytes: u64,
    pub seconds: f64,
}

/// Tokenize and pack `cfg.inputs` into a dataset directory at `cfg.out`.
pub fn prepare(cfg: &PrepareConfig) -> Result<PrepareReport, DataError> {
    let start = std::time::Instant::now();
    if cfg.seq_len < 2 {
        return Err(DataError::Config(format!(
            "seq_len must be at least 2, got {}",
            cfg.seq_len
        )));
    }
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(DataError::Config(format!(
            "val_fraction must be in [0, 1), got {}",
            cfg.val_fraction
        )));
    }
    if cfg.shard_rows == 0 {
        return Err(DataError::Config("shard_rows must be positive".into()));
    }
    let files = collect_inputs(&cfg.inputs)?;
    let tokenizer = load_tokenizer(&cfg.tokenizer)?;
    let info = tokenizer_hash(&tokenizer, &cfg.tokenizer)?;
    let eos_token_id = eos_id(&tokenizer, &cfg.tokenizer, cfg.eos_token.as_deref())?;

    let staged = StagedDataset::start(&cfg.out, &cfg.tokenizer)?;

    let input_bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(input_bytes).with_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})")
            .expect("valid template"),
    );
    bar.set_message("tokenizing");

    let mut packers = [
        Packer::new(Split::Train, cfg, &staged.dir, info.vocab_size),
        Packer::new(Split::Validation, cfg, &staged.dir, info.vocab_size),
    ];
    let mut pending: Vec<(Split, String, bool)> = Vec::new();
    let mut pending_bytes = 0usize;
    for (file_idx, path) in files.iter().enumerate() {
        let mut passage_idx = 0u64;
        for_each_passage(path, cfg, |text, doc_end| {
            let split = assign_split(cfg.seed, file_idx as u64, passage_idx, cfg.val_fraction);
            passage_idx += 1;
            pending_bytes += text.len();
            bar.inc(text.len() as u64);
            pending.push((split, text, doc_end));
            if pending_bytes >= 1 << 20 {
                flush(
                    &tokenizer,
                    &cfg.tokenizer,
                    &mut pending,
                    &mut packers,
                    eos_token_id,
                )?;
                pending_bytes = 0;
            }
            Ok(())
        })?;
    }
    flush(
        &tokenizer,
        &cfg.tokenizer,
        &mut pending,
        &mut packers,
        eos_token_id,
    )?;
    bar.finish_with_message("tokenized");

    let [train, val] = packers;
    let train = train.finish()?;
    let val = val.finish()?;
    if cfg.val_fraction > 0.0 && val.shards.is_empty() {
        return Err(DataError::Config(format!(
            "the validation split is empty: {} passages are too few for val_fraction {}; raise --val-fraction or lower --passage-bytes",
            train.passages + val.passages,
            cfg.val_fraction
        )));
    }
    let unigram = unigram_baseline(&train.counts, &val.target_counts);
    let manifest = DatasetManifest {
        format: "ember-tokens".into(),
        format_version: TOKENS_FORMAT_VERSION,
        seq_len: cfg.seq_len,
        vocab_size: info.vocab_size,
        tokenizer_sha256: info.sha256,
        tokenizer_file: "tokenizer.json".into(),
        eos_token_id,
        splits: BTreeMap::from([
            (Split::Train.name().to_string(), train.shards),
            (Split::Validation.name().to_string(), val.shards),
        ]),
        train_tokens: train.tokens,
        validation_tokens: val.tokens,
        dropped_tokens: train.dropped + val.dropped,
        unigram,
        config: cfg.clone(),
        chat: None,
    };
    staged.finish(&manifest)?;
    Ok(PrepareReport {
        manifest,
        input_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A dataset being written: everything goes into a staging directory beside `out`, which
/// replaces `out` only once the manifest is written, so a failed or killed prepare leaves
/// the old dataset as it was, and a new one never mixes with the old one's shards.
pub(crate) struct StagedDataset {
    /// Where shards go while preparing.
    pub dir: PathBuf,
    out: PathBuf,
    /// Where the old dataset goes during the swap.
    old: PathBuf,
    done: bool,
}

impl StagedDataset {
    /// Create the staging directory for `out` and copy the tokenizer in.
    pub fn start(out: &Path, tokenizer: &Path) -> Result<Self, DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let name = out
            .file_name()
            .ok_or_else(|| {
                DataError::Config(format!("--out {} has no directory name", out.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        if out.exists() && !out.join(DatasetManifest::FILE).is_file() && !is_empty_dir(out) {
            return Err(DataError::Config(format!(
                "--out {} exists and is not a prepared dataset (no {}); refusing to replace it",
                out.display(),
                DatasetManifest::FILE
            )));
        }
        let dir = parent.join(format!(".{name}.preparing-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let staged = Self {
            dir,
            out: out.to_path_buf(),
            old: parent.join(format!(".{name}.old-{}", std::process::id())),
            done: false,
        };
        let tok_json = std::fs::read(tokenizer).map_err(io(tokenizer))?;
        write_atomic(&staged.dir.join("tokenizer.json"), &tok_json)?;
        Ok(staged)
    }

    /// Write the manifest and swap the staged dataset in place of `out`.
    pub fn finish(mut self, manifest: &DatasetManifest) -> Result<(), DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let json = serde_json::to_string_pretty(manifest).expect("manifest serializes");
        write_atomic(&self.dir.join(DatasetManifest::FILE), json.as_bytes())?;
        let old = self.old.clone();
        if self.out.exists() {
            std::fs::rename(&self.out, &old).map_err(io(&self.out))?;
        }
        if let Err(e) = std::fs::rename(&self.dir, &self.out) {
            // put the old dataset back where it was
            if old.exists() {
                let _ = std::fs::rename(&old, &self.out);
            }
            return Err(io(&self.out)(e));
        }
        self.done = true;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }
}

impl Drop for StagedDataset {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// Expand directories into their `.txt`/`.jsonl` files, sorted for determinism.
fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for input in inputs {
        let io = |source| DataError::Io {
            path: input.clone(),
            source,
        };
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_text(p) || is_jsonl(p))
                .collect();
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            if !is_text(input) && !is_jsonl(input) {
                return Err(DataError::Format {
                    path: input.clone(),
                    message: "expected a .txt or .jsonl file".into(),
                });
            }
            files.push(input.clone());
        } else {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "input not found",
            )));
        }
    }
    if files.is_empty() {
        return Err(DataError::NoInput(format!(
            "no .txt or .jsonl files in {inputs:?}"
        )));
    }
    Ok(files)
}

fn is_text(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "txt")
}

fn is_jsonl(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "jsonl")
}

/// Resolve the document separator token id.
pub(crate) fn eos_id(
    tokenizer: &Tokenizer,
    path: &Path,
    wanted: Option<&str>,
) -> Result<u32, DataError> {
    if let Some(tok) = wanted {
        return tokenizer
            .token_to_id(tok)
            .ok_or_else(|| DataError::MissingToken {
                path: path.to_path_buf(),
                token: tok.to_string(),
            });
    }
    ["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>"]
        .iter()
        .find_map(|t| tokenizer.token_to_id(t))
        .ok_or_else(|| DataError::MissingToken {
            path: path.to_path_buf(),
            token: "<|endoftext|>".into(),
        })
}

/// Call `f(text, ends_document)` for each passage of a file. Plain text is one document
/// cut into passages of about `passage_bytes` at paragraph (or line) ends; each JSONL record
/// is one document and one passage.
fn for_each_passage(
    path: &Path,
    cfg: &PrepareConfig,
    mut f: impl FnMut(String, bool) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut line = String::new();
    let mut line_no = 0usize;
    if is_jsonl(path) {
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 {
                return Ok(());
            }
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let jsonl_err = |message: String| DataError::Jsonl {
                path: path.to_path_buf(),
                line: line_no,
                message,
            };
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| jsonl_err(e.to_string()))?;
            let text = value
                .get(&cfg.text_field)
                .and_then(|v| v.as_str())
                .ok_or_else(|| jsonl_err(format!("no string field {:?}", cfg.text_field)))?;
            f(text.to_string(), true)?;
        }
    }
    let mut passage = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        let blank = line.trim().is_empty();
        passage.push_str(&line);
        // Prefer paragraph ends; texts without blank lines are cut at a line end.
        if (blank && passage.len() >= cfg.passage_bytes) || passage.len() >= 2 * cfg.passage_bytes {
            f(std::mem::take(&mut passage), false)?;
        }
    }
    if !passage.is_empty() {
        f(passage, true)?;
    }
    Ok(())
}

/// Deterministic split assignment from a hash of (seed, file, passage).
fn assign_split(seed: u64, file: u64, passage: u64, val_fraction: f64) -> Split {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(file.to_le_bytes());
    h.update(passage.to_le_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    if x < val_fraction {
        Split::Validation
    } else {
        Split::Train
    }
}

/// Tokenize the pending passages in one parallel batch and feed the packers.
fn flush(
    tokenizer: &Tokenizer,
    path: &Path,
    pending: &mut Vec<(Split, String, bool)>,
    packers: &mut [Packer; 2],
    eos: u32,
) -> Result<(), DataError> {
    if pending.is_empty() {
        return Ok(());
    }
    let texts: Vec<&str> = pending.iter().map(|(_, t, _)| t.as_str()).collect();
    let encodings = tokenizer
        .encode_batch(texts, false)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    for ((split, _, doc_end), enc) in pending.iter().zip(encodings) {
        let packer = &mut packers[*split as usize];
        packer.passages += 1;
        packer.push(enc.get_ids())?;
        if *doc_end {
            packer.push(&[eos])?;
        }
    }
    pending.clear();
    Ok(())
}

/// Packs one split's token stream into rows and rows into shards.
struct Packer {
    split: Split,
    out: PathBuf,
    seq_len: usize,
    shard_rows: usize,
    buffer: Vec<u32>,
    rows: Vec<i32>,
    shards: Vec<ShardInfo>,
    tokens: u64,
    /// Passages routed to this split.
    passages: u64,
    /// Frequency of every token in emitted rows.
    counts: Vec<u64>,
    /// Frequency of every token at target positions (all but the first of a row).
    target_counts: Vec<u64>,
}

struct PackedSplit {
    shards: Vec<ShardInfo>,
    tokens: u64,
    passages: u64,
    dropped: u64,
    counts: Vec<u64>,
    target_counts: Vec<u64>,
}

impl Packer {
    fn new(split: Split, cfg: &PrepareConfig, out: &Path, vocab: usize) -> Self {
        Self {
            split,
            out: out.to_path_buf(),
            seq_len: cfg.seq_len,
            shard_rows: cfg.shard_rows,
            buffer: Vec::new(),
            rows: Vec::new(),
            shards: Vec::new(),
            tokens: 0,
            passages: 0,
            counts: vec![0; vocab],
            target_counts: vec![0; vocab],
        }
    }

    fn push(&mut self, ids: &[u32]) -> Result<(), DataError> {
        self.buffer.extend_from_slice(ids);
        let full = self.buffer.len() / self.seq_len * self.seq_len;
        for row in self.buffer[..full].chunks(self.seq_len) {
            for (i, &t) in row.iter().enumerate() {
                self.counts[t as usize] += 1;
                if i > 0 {
                    self.target_counts[t as usize] += 1;
                }
            }
            self.rows.extend(row.iter().map(|&t| t as i32));
        }
        self.tokens += full as u64;
        self.buffer.drain(..full);
        while self.rows.len() >= self.shard_rows * self.seq_len {
            let rest = self.rows.split_off(self.shard_rows * self.seq_len);
            let rows = std::mem::replace(&mut self.rows, rest);
            self.write_shard(rows)?;
        }
        Ok(())
    }

    fn write_shard(&mut self, rows: Vec<i32>) -> Result<(), DataError> {
        let name = format!("{}-{:05}.arrow", self.split.name(), self.shards.len());
        let path = self.out.join(&name);
        let n = rows.len() / self.seq_len;
        write_token_shard(&path, self.seq_len, rows, self.split)?;
        self.shards.push(ShardInfo {
            file: name,
            rows: n,
        });
        Ok(())
    }

    fn finish(mut self) -> Result<PackedSplit, DataError> {
        if !self.rows.is_empty() {
            let rows = std::mem::take(&mut self.rows);
            self.write_shard(rows)?;
        }
        Ok(PackedSplit {
            shards: self.shards,
            tokens: self.tokens,
            passages: self.passages,
            dropped: self.buffer.len() as u64,
            counts: self.counts,
            target_counts: self.target_counts,
        })
    }
}

/// Arrow schema of a token shard.
pub(crate) fn token_schema(seq_len: usize, split: Split) -> Schema {
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    Schema::new(vec![Field::new(
        "input_ids",
        DataType::FixedSizeList(item, seq_len as i32),
        false,
    )])
    .with_metadata(
        [
            ("ember.format".to_string(), "ember-tokens".to_string()),
            (
                "ember.format_version".to_string(),
                TOKENS_FORMAT_VERSION.to_string(),
            ),
            ("ember.split".to_string(), split.name().to_string()),
            ("ember.seq_len".to_string(), seq_len.to_string()),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<String, String>>(),
    )
}

/// Write rows (flattened, `seq_len` each) to an Arrow IPC file atomically.
fn write_token_shard(
    path: &Path,
    seq_len: usize,
    rows: Vec<i32>,
    split: Split,
) -> Result<(), DataError> {
    let schema = Arc::new(token_schema(seq_len, split));
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let values = Arc::new(Int32Array::from(rows));
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    let list =
        FixedSizeListArray::try_new(item, seq_len as i32, values, None).map_err(arrow_err)?;
    write_ipc_atomic(
        path,
        schema,
        vec![Arc::new(list) as ArrayRef],
        IpcCompression::None,
    )
}

/// Cross-entropy (nats) of add-one-smoothed train unigram frequencies on validation targets.
pub(crate) fn unigram_baseline(train_counts: &[u64], val_targets: &[u64]) -> UnigramBaseline {
    let total: f64 = train_counts.iter().sum::<u64>() as f64 + train_counts.len() as f64;
    let n: u64 = val_targets.iter().sum();
    let nll: f64 = train_counts
        .iter()
        .zip(val_targets)
        .filter(|(_, v)| **v > 0)
        .map(|(c, v)| -(*v as f64) * ((*c as f64 + 1.0) / total).ln())
        .sum();
    // With no validation split there is nothing to measure: report 0 targets (and 0 nats).
    let ce = if n > 0 { nll / n as f64 } else { 0.0 };
    UnigramBaseline {
        validation_cross_entropy: ce,
        validation_perplexity: ce.exp(),
        validation_targets: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_baseline_matches_hand_computation() {
        // train counts a:3 b:1 (+1 smoothing over 2 tokens -> p(a)=4/6, p(b)=2/6); val targets a, b, b
        let u = unigram_baseline(&[3, 1], &[1, 2]);
        let want = -((4.0f64 / 6.0).ln() + 2.0 * (2.0f64 / 6.0).ln()) / 3.0;
        assert!((u.validation_cross_entropy - want).abs() < 1e-12);
        assert_eq!(u.validation_targets, 3);
    }

    #[test]
    fn split_assignment_is_deterministic_and_near_fraction() {
        let n = 20_000;
        let val = (0..n)
            .filter(|&i| assign_split(7, 0, i, 0.1) == Split::Validation)
            .count();
        assert!((1800..2200).contains(&val), "{val}");
        let again = (0..n)
            .filter(|&i| assign_split(7, 0, i, 0.1) == Split::Validation)
            .count();
        assert_eq!(val, again);
        let other_seed = (0..n)
            .filter(|&i| assign_split(8, 0, i, 0.1) != assign_split(7, 0, i, 0.1))
            .count();
        assert!(other_seed > 1000);
    }
}
