//! Reading prepared token datasets back.

use std::path::{Path, PathBuf};

use arrow::array::{Array, FixedSizeListArray, Int32Array};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::{DataError, DatasetManifest, open_ipc};

/// A split of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train = 0,
    Validation = 1,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// All rows of one split, held as one flat `Vec<i32>` (4 bytes per token).
#[derive(Debug, Clone)]
pub struct TokenDataset {
    pub dir: PathBuf,
    pub manifest: DatasetManifest,
    pub split: Split,
    tokens: Vec<i32>,
    /// Per-token labels of instruction datasets (-100 = no loss), same layout as `tokens`.
    labels: Option<Vec<i32>>,
}

impl TokenDataset {
    /// Open one split of the prepared dataset at `dir`, checking every shard's schema,
    /// row length and token range against the manifest.
    pub fn open(dir: &Path, split: Split) -> Result<Self, DataError> {
        let manifest = DatasetManifest::load(dir)?;
        let shards = manifest
            .splits
            .get(split.name())
            .cloned()
            .unwrap_or_default();
        let mut tokens = Vec::with_capacity(manifest.rows(split) * manifest.seq_len);
        let mut labels = manifest.chat.as_ref().map(|_| Vec::new());
        for shard in &shards {
            let path = dir.join(&shard.file);
            let (rows, seq_len) = read_token_shard(&path)?;
            let format = |message: String| DataError::Format {
                path: path.clone(),
                message,
            };
            if seq_len != manifest.seq_len {
                return Err(format(format!(
                    "rows have {seq_len} tokens, manifest says seq_len {}",
                    manifest.seq_len
                )));
            }
            if rows.len() != shard.rows * seq_len {
                return Err(format(format!(
                    "{} rows, manifest says {}",
                    rows.len() / seq_len,
                    shard.rows
                )));
            }
            if let Some(bad) = rows
                .iter()
                .find(|&&t| t < 0 || t as usize >= manifest.vocab_size)
            {
                return Err(format(format!(
                    "token id {bad} outside the vocabulary of {}",
                    manifest.vocab_size
                )));
            }
            if let Some(all) = labels.as_mut() {
                let l = read_int_column(&path, "labels", seq_len)?;
                if let Some(i) =
                    (0..rows.len()).find(|&i| l[i] != crate::IGNORE_LABEL && l[i] != rows[i])
                {
                    return Err(format(format!(
                        "labels of row {} position {}: {} is neither -100 nor the token {}",
                        i / seq_len,
                        i % seq_len,
                        l[i],
                        rows[i]
                    )));
                }
                all.extend(l);
            }
            tokens.extend(rows);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            split,
            tokens,
            labels,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.manifest.seq_len
    }

    pub fn len(&self) -> usize {
        self.tokens.len() / self.seq_len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Keep only the first `rows` rows.
    pub fn truncate(&mut self, rows: usize) {
        let t = self.seq_len();
        self.tokens.truncate(rows * t);
        if let Some(l) = self.labels.as_mut() {
            l.truncate(rows * t);
        }
    }

    /// Labels of row `i` (instruction datasets): the token where it carries a loss, else -100.
    pub fn labels(&self, i: usize) -> Option<&[i32]> {
        let t = self.seq_len();
        self.labels.as_ref().map(|l| &l[i * t..(i + 1) * t])
    }

    /// Row `i` as token ids.
    pub fn row(&self, i: usize) -> &[i32] {
        let t = self.seq_len();
        &self.tokens[i * t..(i + 1) * t]
    }
}

/// Read one token shard: (flattened rows, seq_len).
pub fn read_token_shard(path: &Path) -> Result<(Vec<i32>, usize), DataError> {
    let (rows, seq_len) = read_list_column(path, "input_ids")?;
    Ok((rows, seq_len))
}

/// A `FixedSizeList<Int32, seq_len>` column other than input_ids (e.g. labels).
fn read_int_column(path: &Path, name: &str, seq_len: usize) -> Result<Vec<i32>, DataError> {
    let (values, n) = read_list_column(path, name)?;
    if n != seq_len {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!("{name} rows have {n} entries, input_ids {seq_len}"),
        });
    }
    Ok(values)
}

fn read_list_column(path: &Path, name: &str) -> Result<(Vec<i32>, usize), DataError> {
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    let reader = open_ipc(path)?;
    let schema = reader.schema();
    let field = schema
        .field_with_name(name)
        .map_err(|_| format(format!("no column {name}")))?;
    let seq_len = match field.data_type() {
        DataType::FixedSizeList(item, n) if item.data_type() == &DataType::Int32 => *n as usize,
        other => {
            return Err(format(format!(
                "{name} has type {other}, expected FixedSizeList<Int32>"
            )));
        }
    };
    let col = schema.index_of(name).expect("checked above");
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let list = batch
            .column(col)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .ok_or_else(|| format(format!("{name} is not a FixedSizeList")))?;
        let values = list
            .values()
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| format("values not Int32".into()))?;
        let start = list.offset() * seq_len;
        out.extend_from_slice(&values.values()[start..start + list.len() * seq_len]);
    }
    Ok((out, seq_len))
}
