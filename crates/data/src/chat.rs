//! Instruction (chat) datasets: one record per row, rendered with a chat template, padded to
//! `seq_len`, with a `labels` column in HF's convention (-100 = no loss: the prompt and the
//! padding), so fine-tuning and distillation learn the answers only.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Int32Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::prepare::{StagedDataset, eos_id, token_schema, unigram_baseline};
use crate::{
    DataError, DatasetManifest, IpcCompression, PrepareConfig, ShardInfo, Split,
    TOKENS_FORMAT_VERSION, load_tokenizer, tokenizer_hash, write_ipc_atomic,
};

/// Label of positions that carry no loss.
pub const IGNORE_LABEL: i32 = -100;

/// How an instruction and its answer become one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTemplate {
    /// `### Instruction:\n{instruction}\n\n### Response:\n{answer}<eos>`
    Alpaca,
    /// `<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n{answer}<eos>`
    Chatml,
}

impl ChatTemplate {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "alpaca" => Some(Self::Alpaca),
            "chatml" => Some(Self::Chatml),
            _ => None,
        }
    }

    /// The prompt: everything before the answer (the model generates from here).
    pub fn prompt(self, instruction: &str) -> String {
        match self {
            Self::Alpaca => format!("### Instruction:\n{instruction}\n\n### Response:\n"),
            Self::Chatml => {
                format!("<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n")
            }
        }
    }

    /// The template in Jinja, as HF's `tokenizer_config.json` `chat_template` holds it.
    pub fn jinja(self) -> &'static str {
        match self {
            Self::Alpaca => {
                "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n### Response:\n{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
            }
            Self::Chatml => {
                "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n<|im_start|>assistant\n{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
            }
        }
    }
}

/// One instruction record of a JSONL file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatRecord {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    pub instruction: String,
    pub answer: String,
}

/// Read `{"instruction": ..., "answer": ...}` records (other fields kept: id, category).
pub fn read_chat_jsonl(path: &Path) -> Result<Vec<ChatRecord>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: ChatRecord = serde_json::from_str(&line).map_err(|e| DataError::Jsonl {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("{e} (expected an object with string fields instruction and answer)"),
        })?;
        out.push(rec);
    }
    if out.is_empty() {
        return Err(DataError::NoInput(format!(
            "{} holds no records",
            path.display()
        )));
    }
    Ok(out)
}

/// `ember data prepare-chat` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatPrepareConfig {
    pub train: PathBuf,
    /// Held-out records (the validation split).
    pub validation: PathBuf,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub template: ChatTemplate,
    /// Tokens per row; a record that does not fit is an error naming it.
    pub seq_len: usize,
    pub eos_token: Option<String>,
}

/// Manifest details of a chat dataset (`dataset.json` field `chat`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatInfo {
    pub template: ChatTemplate,
    pub train_records: usize,
    pub validation_records: usize,
    /// Answer tokens (the positions with a loss) per split, EOS included.
    pub train_answer_tokens: u64,
    pub validation_answer_tokens: u64,
    pub longest_record_tokens: usize,
}

/// `(input_ids, labels)` of one record: prompt + answer + EOS, labels -100 on the prompt.
pub fn encode_record(
    tokenizer: &Tokenizer,
    template: ChatTemplate,
    rec: &ChatRecord,
    eos: u32,
) -> Result<(Vec<i32>, Vec<i32>), String> {
    let prompt = template.prompt(&rec.instruction);
    let p = tokenizer
        .encode(prompt.as_str(), false)
        .map_err(|e| e.to_string())?;
    let full = tokenizer
        .encode(format!("{prompt}{}", rec.answer).as_str(), false)
        .map_err(|e| e.to_string())?;
    let (p, full) = (p.get_ids(), full.get_ids());
    // BPE may merge across the prompt/answer boundary: the answer starts where the prompt's
    // tokens stop matching.
    let split = p.iter().zip(full).take_while(|(a, b)| a == b).count();
    let mut ids: Vec<i32> = full.iter().map(|&t| t as i32).collect();
    ids.push(eos as i32);
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| if i < split { IGNORE_LABEL } else { t })
        .collect();
    Ok((ids, labels))
}

/// Tokenize the train and validation records into a prepared dataset with labels.
pub fn prepare_chat(cfg: &ChatPrepareConfig) -> Result<DatasetManifest, DataError> {
    let tokenizer = load_tokenizer(&cfg.tokenizer)?;
    let info = tokenizer_hash(&tokenizer, &cfg.tokenizer)?;
    let eos = eos_id(&tokenizer, &cfg.tokenizer, cfg.eos_token.as_deref())?;
    let staged = StagedDataset::start(&cfg.out, &cfg.tokenizer)?;
    let t = cfg.seq_len;
    let mut splits = BTreeMap::new();
    let mut counts = [vec![0u64; info.vocab_size], vec![0u64; info.vocab_size]];
    let mut records = [0usize; 2];
    let mut answer_tokens = [0u64; 2];
    let mut tokens = [0u64; 2];
    let mut longest = 0;
    for (si, (split, path)) in [
        (Split::Train, &cfg.train),
        (Split::Validation, &cfg.validation),
    ]
    .into_iter()
    .enumerate()
    {
        let recs = read_chat_jsonl(path)?;
        let mut ids_rows = Vec::with_capacity(recs.len() * t);
        let mut label_rows = Vec::with_capacity(recs.len() * t);
        for (i, rec) in recs.iter().enumerate() {
            let (ids, labels) =
                encode_record(&tokenizer, cfg.template, rec, eos).map_err(|message| {
                    DataError::Jsonl {
                        path: path.clone(),
                        line: i + 1,
                        message,
                    }
                })?;
            if ids.len() > t {
                return Err(DataError::Jsonl {
                    path: path.clone(),
                    line: i + 1,
                    message: format!(
                        "record {} is {} tokens with the {:?} template, longer than --seq-len {t}; raise --seq-len",
                        rec.id.as_deref().unwrap_or("?"),
                        ids.len(),
                        cfg.template
                    ),
                });
            }
            longest = longest.max(ids.len());
            for &l in labels.iter().filter(|&&l| l >= 0) {
                counts[si][l as usize] += 1;
                answer_tokens[si] += 1;
            }
            tokens[si] += ids.len() as u64;
            let pad = t - ids.len();
            ids_rows.extend(ids);
            ids_rows.extend(std::iter::repeat_n(eos as i32, pad));
            label_rows.extend(labels);
            label_rows.extend(std::iter::repeat_n(IGNORE_LABEL, pad));
        }
        let file = format!("{}-00000.arrow", split.name());
        write_chat_shard(&staged.dir.join(&file), t, ids_rows, label_rows, split)?;
        records[si] = recs.len();
        splits.insert(
            split.name().to_string(),
            vec![ShardInfo {
                file,
                rows: recs.len(),
            }],
        );
    }
    // the unigram baseline over the answer tokens (the only positions with a loss)
    let unigram = unigram_baseline(&counts[0], &counts[1]);
    let manifest = DatasetManifest {
        format: "ember-tokens".into(),
        format_version: TOKENS_FORMAT_VERSION,
        seq_len: t,
        vocab_size: info.vocab_size,
        tokenizer_sha256: info.sha256,
        tokenizer_file: "tokenizer.json".into(),
        eos_token_id: eos,
        splits,
        train_tokens: tokens[0],
        validation_tokens: tokens[1],
        dropped_tokens: 0,
        unigram,
        config: PrepareConfig {
            inputs: vec![cfg.train.clone(), cfg.validation.clone()],
            tokenizer: cfg.tokenizer.clone(),
            out: cfg.out.clone(),
            seq_len: t,
            val_fraction: 0.0,
            eos_token: cfg.eos_token.clone(),
            ..PrepareConfig::default()
        },
        chat: Some(ChatInfo {
            template: cfg.template,
            train_records: records[0],
            validation_records: records[1],
            train_answer_tokens: answer_tokens[0],
            validation_answer_tokens: answer_tokens[1],
            longest_record_tokens: longest,
        }),
    };
    staged.finish(&manifest)?;
    Ok(manifest)
}

fn write_chat_shard(
    path: &Path,
    t: usize,
    ids: Vec<i32>,
    labels: Vec<i32>,
    split: Split,
) -> Result<(), DataError> {
    let base = token_schema(t, split);
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        "labels",
        DataType::FixedSizeList(item.clone(), t as i32),
        false,
    ));
    let schema = Arc::new(Schema::new(fields).with_metadata(base.metadata().clone()));
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let list = |v: Vec<i32>| -> Result<ArrayRef, DataError> {
        Ok(Arc::new(
            FixedSizeListArray::try_new(
                item.clone(),
                t as i32,
                Arc::new(Int32Array::from(v)),
                None,
            )
            .map_err(arrow_err)?,
        ))
    };
    write_ipc_atomic(
        path,
        schema,
        vec![list(ids)?, list(labels)?],
        IpcCompression::None,
    )
}
