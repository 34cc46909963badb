//! Byte-level BPE training with the `tokenizers` crate, and tokenizer identity.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::{DataError, write_atomic};

/// Settings for `ember tokenizer train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainTokenizerConfig {
    /// Text files to learn merges from.
    pub files: Vec<PathBuf>,
    /// Target vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Merges must occur at least this often.
    pub min_frequency: u64,
    /// Stop reading input after this many bytes (0 = read everything).
    pub max_bytes: u64,
    /// Special tokens, given ids 0.. in this order. The first is the document separator.
    pub special_tokens: Vec<String>,
}

impl Default for TrainTokenizerConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            vocab_size: 4096,
            min_frequency: 2,
            max_bytes: 0,
            special_tokens: vec!["<|endoftext|>".into(), "<|pad|>".into()],
        }
    }
}

/// What identifies a tokenizer across teacher, dataset and student.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// SHA-256 of the tokenizer's canonical JSON serialization.
    pub sha256: String,
    /// Number of ids the tokenizer can produce (added tokens included).
    pub vocab_size: usize,
}

/// Train a byte-level BPE (GPT-2 style: no normalizer, byte-level pre-tokenizer and
/// decoder, no prefix space) and write a standard `tokenizer.json` to `out`.
pub fn train_tokenizer(cfg: &TrainTokenizerConfig, out: &Path) -> Result<TokenizerInfo, DataError> {
    if cfg.files.is_empty() {
        return Err(DataError::NoInput(
            "no text files given to train the tokenizer on".into(),
        ));
    }
    if cfg.vocab_size < 256 + cfg.special_tokens.len() {
        return Err(DataError::Config(format!(
            "vocab_size {} is smaller than the 256 byte symbols plus {} special tokens",
            cfg.vocab_size,
            cfg.special_tokens.len()
        )));
    }
    let tok_err = |message: String| DataError::Tokenizer {
        path: out.to_path_buf(),
        message,
    };
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(true)
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(
            cfg.special_tokens
                .iter()
                .map(|t| AddedToken::from(t.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer: tokenizers::TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| tok_err(e.to_string()))?;

    let lines = BoundedLines::new(&cfg.files, cfg.max_bytes);
    let error = lines.error.clone();
    tokenizer
        .train(&mut trainer, lines)
        .map_err(|e| tok_err(e.to_string()))?;
    if let Some(e) = error.lock().unwrap().take() {
        return Err(e);
    }
    let json = tokenizer
        .to_string(false)
        .map_err(|e| tok_err(e.to_string()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_atomic(out, json.as_bytes())?;
    tokenizer_hash(&load_tokenizer(out)?, out)
}

/// Streams lines (newlines kept) from a list of files, stopping after `max_bytes`
/// (0 = all). The tokenizer trainer only keeps word counts, so memory stays bounded
/// by the vocabulary of the corpus, not its size. An I/O error ends the stream and
/// is kept in `error` for the caller to report.
struct BoundedLines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, BufReader<std::fs::File>)>,
    remaining: u64,
    error: std::sync::Arc<std::sync::Mutex<Option<DataError>>>,
}

impl BoundedLines {
    fn new(files: &[PathBuf], max_bytes: u64) -> Self {
        Self {
            files: files.to_vec().into_iter(),
            current: None,
            remaining: if max_bytes == 0 { u64::MAX } else { max_bytes },
            error: Default::default(),
        }
    }
}

impl Iterator for BoundedLines {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        while self.remaining > 0 {
            if self.current.is_none() {
                let path = self.files.next()?;
                match std::fs::File::open(&path) {
                    Ok(f) => self.current = Some((path, BufReader::new(f))),
                    Err(source) => {
                        *self.error.lock().unwrap() = Some(DataError::Io { path, source });
                        return None;
                    }
                }
            }
            let (path, reader) = self.current.as_mut()?;
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => self.current = None,
                Ok(n) => {
                    self.remaining = self.remaining.saturating_sub(n as u64);
                    return Some(line);
                }
                Err(source) => {
                    *self.error.lock().unwrap() = Some(DataError::Io {
                        path: path.clone(),
                        source,
                    });
                    return None;
                }
            }
        }
        None
    }
}

/// Load any HF `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, DataError> {
    if !path.is_file() {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
        });
    }
    Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Identity of a tokenizer: hash of its canonical serialization plus its vocabulary size.
/// Two files that differ only in whitespace or key order hash the same.
pub fn tokenizer_hash(tokenizer: &Tokenizer, path: &Path) -> Result<TokenizerInfo, DataError> {
    let json = tokenizer
        .to_string(false)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let sha256 = format!("{:x}", Sha256::digest(json.as_bytes()));
    Ok(TokenizerInfo {
        sha256,
        vocab_size: tokenizer.get_vocab_size(true),
    })
}
