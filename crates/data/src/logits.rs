//! The teacher-logits format: where the teacher runner and the trainer meet.
//!
//! A logits directory holds `logits.json` (manifest) and Arrow IPC shards
//! `<split>-NNNNN.arrow`, one row per sequence of the source dataset:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `row_index` | `UInt64` | row of the source dataset split |
//! | `input_ids` | `FixedSizeList<Int32, T>` | the sequence |
//! | `topk_ids` | `FixedSizeList<FixedSizeList<Int32, k>, T>` | per position, the k most likely next tokens, most likely first |
//! | `topk_logprobs` | `FixedSizeList<FixedSizeList<Float32, k>, T>` | their log-probabilities, normalised over the full vocabulary |
//!
//! Position `i` holds the teacher's distribution of token `i + 1` given tokens `0..=i`.
//! Because log-probabilities are normalised over the whole vocabulary, the probability
//! mass outside the top k is `1 - sum(exp(topk_logprobs))`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::{DataError, Split, open_ipc, read_manifest, write_atomic, write_ipc_atomic};

/// Version of the logits format.
pub const LOGITS_FORMAT_VERSION: u32 = 1;

/// Who produced the logits and how; stored in every shard's schema metadata and in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitsMeta {
    /// Teacher name (directory name or served model id).
    pub teacher: String,
    /// SHA-256 of the teacher's config.json (or of the served model id for remote teachers).
    pub teacher_config_sha256: String,
    /// SHA-256 of the tokenizer (see `tokenizer_hash`), shared with the dataset.
    pub tokenizer_sha256: String,
    /// Size of the teacher's output layer (may exceed the tokenizer's by padding).
    pub vocab_size: usize,
    pub k: usize,
    /// Softmax temperature the log-probabilities were computed at.
    pub temperature: f32,
    pub seq_len: usize,
    pub split: Split,
    /// `local`, `vllm`, `sglang`, `distillkit`.
    pub source: String,
    /// Fingerprint of a local teacher's weights (SHA-256 over its safetensors files' names,
    /// sizes and headers), so that a resumed recording never mixes two versions of a
    /// teacher; empty when unknown (served teachers, or shards of older Ember versions).
    #[serde(default)]
    pub teacher_weights: String,
}

impl LogitsMeta {
    fn to_schema_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("ember.format".into(), "ember-logits".into()),
            (
                "ember.format_version".into(),
                LOGITS_FORMAT_VERSION.to_string(),
            ),
            ("ember.teacher".into(), self.teacher.clone()),
            (
                "ember.teacher_config_sha256".into(),
                self.teacher_config_sha256.clone(),
            ),
            (
                "ember.tokenizer_sha256".into(),
                self.tokenizer_sha256.clone(),
            ),
            ("ember.vocab_size".into(), self.vocab_size.to_string()),
            ("ember.k".into(), self.k.to_string()),
            ("ember.temperature".into(), self.temperature.to_string()),
            ("ember.seq_len".into(), self.seq_len.to_string()),
            ("ember.split".into(), self.split.name().into()),
            ("ember.source".into(), self.source.clone()),
            ("ember.teacher_weights".into(), self.teacher_weights.clone()),
        ])
    }

    fn from_schema_metadata(md: &HashMap<String, String>, path: &Path) -> Result<Self, DataError> {
        let get = |k: &str| {
            md.get(k).cloned().ok_or_else(|| DataError::Format {
                path: path.to_path_buf(),
                message: format!("schema metadata lacks {k}; not an Ember logits shard"),
            })
        };
        let num = |k: &str| -> Result<usize, DataError> {
            get(k)?.parse().map_err(|_| DataError::Format {
                path: path.to_path_buf(),
                message: format!("{k} is not a number"),
            })
        };
        if get("ember.format")? != "ember-logits" {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: "ember.format is not ember-logits".into(),
            });
        }
        let version = num("ember.format_version")?;
        if version != LOGITS_FORMAT_VERSION as usize {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "logits format v{version}, this Ember reads v{LOGITS_FORMAT_VERSION}"
                ),
            });
        }
        let split = match get("ember.split")?.as_str() {
            "train" => Split::Train,
            "validation" => Split::Validation,
            other => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!("unknown split {other}"),
                });
            }
        };
        Ok(Self {
            teacher: get("ember.teacher")?,
            teacher_config_sha256: get("ember.teacher_config_sha256")?,
            tokenizer_sha256: get("ember.tokenizer_sha256")?,
            vocab_size: num("ember.vocab_size")?,
            k: num("ember.k")?,
            temperature: get("ember.temperature")?
                .parse()
                .map_err(|_| DataError::Format {
                    path: path.to_path_buf(),
                    message: "bad temperature".into(),
                })?,
            seq_len: num("ember.seq_len")?,
            split,
            source: get("ember.source")?,
            teacher_weights: md.get("ember.teacher_weights").cloned().unwrap_or_default(),
        })
    }
}

/// Teacher top-k distributions for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct LogitsRow {
    pub row_index: u64,
    /// `T` tokens.
    pub input_ids: Vec<i32>,
    /// `T * k` ids, row-major by position.
    pub topk_ids: Vec<i32>,
    /// `T * k` log-probabilities.
    pub topk_logprobs: Vec<f32>,
}

fn nested(item: DataType, k: usize, t: usize) -> (DataType, Arc<Field>) {
    let inner_field = Arc::new(Field::new("item", item, false));
    let inner = DataType::FixedSizeList(inner_field, k as i32);
    let outer_field = Arc::new(Field::new("item", inner.clone(), false));
    (
        DataType::FixedSizeList(outer_field.clone(), t as i32),
        outer_field,
    )
}

/// Arrow schema of a logits shard.
pub fn logits_schema(meta: &LogitsMeta) -> Schema {
    let (t, k) = (meta.seq_len, meta.k);
    let ids_item = Arc::new(Field::new("item", DataType::Int32, false));
    Schema::new(vec![
        Field::new("row_index", DataType::UInt64, false),
        Field::new(
            "input_ids",
            DataType::FixedSizeList(ids_item, t as i32),
            false,
        ),
        Field::new("topk_ids", nested(DataType::Int32, k, t).0, false),
        Field::new("topk_logprobs", nested(DataType::Float32, k, t).0, false),
    ])
    .with_metadata(meta.to_schema_metadata())
}

fn nested_array(
    values: ArrayRef,
    item: DataType,
    k: usize,
    t: usize,
    rows: usize,
) -> Result<FixedSizeListArray, arrow::error::ArrowError> {
    let inner_field = Arc::new(Field::new("item", item.clone(), false));
    let inner = FixedSizeListArray::try_new(inner_field, k as i32, values, None)?;
    let (_, outer_field) = nested(item, k, t);
    debug_assert_eq!(inner.len(), rows * t);
    FixedSizeListArray::try_new(outer_field, t as i32, Arc::new(inner), None)
}

/// Write `rows` as one logits shard at `path`, atomically (temporary file, fsync, rename).
pub fn write_logits_shard(
    path: &Path,
    meta: &LogitsMeta,
    rows: &[LogitsRow],
) -> Result<(), DataError> {
    let (t, k) = (meta.seq_len, meta.k);
    let format = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    for r in rows {
        if r.input_ids.len() != t || r.topk_ids.len() != t * k || r.topk_logprobs.len() != t * k {
            return Err(format(format!(
                "row {}: {} tokens, {} ids, {} logprobs; expected {t}, {}, {}",
                r.row_index,
                r.input_ids.len(),
                r.topk_ids.len(),
                r.topk_logprobs.len(),
                t * k,
                t * k
            )));
        }
    }
    let arrow_err = |source| DataError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let schema = Arc::new(logits_schema(meta));
    let n = rows.len();
    let row_index = UInt64Array::from(rows.iter().map(|r| r.row_index).collect::<Vec<_>>());
    let ids_item = Arc::new(Field::new("item", DataType::Int32, false));
    let input_ids = FixedSizeListArray::try_new(
        ids_item,
        t as i32,
        Arc::new(Int32Array::from(
            rows.iter()
                .flat_map(|r| r.input_ids.iter().copied())
                .collect::<Vec<_>>(),
        )),
        None,
    )
    .map_err(arrow_err)?;
    let topk_ids = nested_array(
        Arc::new(Int32Array::from(
            rows.iter()
                .flat_map(|r| r.topk_ids.iter().copied())
                .collect::<Vec<_>>(),
        )),
        DataType::Int32,
        k,
        t,
        n,
    )
    .map_err(arrow_err)?;
    let topk_logprobs = nested_array(
        Arc::new(Float32Array::from(
            rows.iter()
                .flat_map(|r| r.topk_logprobs.iter().copied())
                .collect::<Vec<_>>(),
        )),
        DataType::Float32,
        k,
        t,
        n,
    )
    .map_err(arrow_err)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(row_index),
        Arc::new(input_ids),
        Arc::new(topk_ids),
        Arc::new(topk_logprobs),
    ];
    write_ipc_atomic(path, schema, columns)
}

/// Read one logits shard back.
pub fn read_logits_shard(path: &Path) -> Result<(LogitsMeta, Vec<LogitsRow>), DataError> {
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
    let md: HashMap<String, String> = schema
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let meta = LogitsMeta::from_schema_metadata(&md, path)?;
    let (t, k) = (meta.seq_len, meta.k);
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format(format!("no column {name}")))
        };
        let row_index = col("row_index")?;
        let row_index = row_index
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| format("row_index is not UInt64".into()))?;
        let flat_i32 = |a: &ArrayRef, depth: usize, name: &str| -> Result<Vec<i32>, DataError> {
            let v = flatten(a, depth)
                .ok_or_else(|| format(format!("{name} has an unexpected type")))?;
            Ok(v.as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| format(format!("{name} values are not Int32")))?
                .values()
                .to_vec())
        };
        let input_ids = flat_i32(&col("input_ids")?, 1, "input_ids")?;
        let topk_ids = flat_i32(&col("topk_ids")?, 2, "topk_ids")?;
        let lp = flatten(&col("topk_logprobs")?, 2)
            .ok_or_else(|| format("topk_logprobs has an unexpected type".into()))?;
        let topk_logprobs = lp
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| format("topk_logprobs are not Float32".into()))?
            .values()
            .to_vec();
        let n = batch.num_rows();
        if input_ids.len() != n * t
            || topk_ids.len() != n * t * k
            || topk_logprobs.len() != n * t * k
        {
            return Err(format(format!(
                "column lengths do not match {n} rows of T={t}, k={k}"
            )));
        }
        for i in 0..n {
            rows.push(LogitsRow {
                row_index: row_index.value(i),
                input_ids: input_ids[i * t..(i + 1) * t].to_vec(),
                topk_ids: topk_ids[i * t * k..(i + 1) * t * k].to_vec(),
                topk_logprobs: topk_logprobs[i * t * k..(i + 1) * t * k].to_vec(),
            });
        }
    }
    Ok((meta, rows))
}

/// Values of a (nested) FixedSizeList column, `depth` levels down, honouring slice offsets.
fn flatten(a: &ArrayRef, depth: usize) -> Option<ArrayRef> {
    let mut cur = a.clone();
    for _ in 0..depth {
        let list = cur.as_any().downcast_ref::<FixedSizeListArray>()?;
        let size = list.value_length() as usize;
        cur = list.values().slice(list.offset() * size, list.len() * size);
    }
    Some(cur)
}

/// One shard of a logits directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogitsShard {
    pub file: String,
    /// Source-dataset row range `[first_row, first_row + rows)`.
    pub first_row: u64,
    pub rows: usize,
}

/// `logits.json`: what was recorded, from what, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogitsManifest {
    pub format: String,
    pub format_version: u32,
    pub meta: LogitsMeta,
    pub shards: Vec<LogitsShard>,
    /// Token positions recorded.
    pub positions: u64,
    /// Shard bytes on disk per recorded position.
    pub bytes_per_token: f64,
    /// Free-form details (dataset path, recorder settings).
    pub details: serde_json::Value,
}

impl LogitsManifest {
    pub const FILE: &'static str = "logits.json";

    pub fn load(dir: &Path) -> Result<Self, DataError> {
        read_manifest(
            &dir.join(Self::FILE),
            "ember-logits",
            LOGITS_FORMAT_VERSION,
            |m: &Self| (m.format.as_str(), m.format_version),
        )
    }

    /// The manifest of `shards` (already written in `dir`): positions and bytes per position on disk.
    pub fn from_shards(
        dir: &Path,
        meta: LogitsMeta,
        shards: Vec<LogitsShard>,
        details: serde_json::Value,
    ) -> Self {
        let bytes: u64 = shards
            .iter()
            .map(|s| {
                std::fs::metadata(dir.join(&s.file))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum();
        let positions = shards.iter().map(|s| s.rows as u64).sum::<u64>() * meta.seq_len as u64;
        Self {
            format: "ember-logits".into(),
            format_version: LOGITS_FORMAT_VERSION,
            meta,
            shards,
            positions,
            bytes_per_token: bytes as f64 / positions.max(1) as f64,
            details,
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        write_atomic(
            &dir.join(Self::FILE),
            serde_json::to_string_pretty(self)
                .expect("serializes")
                .as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_round_trips_and_rejects_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LogitsMeta {
            teacher: "t".into(),
            teacher_config_sha256: "a".into(),
            tokenizer_sha256: "b".into(),
            vocab_size: 100,
            k: 2,
            temperature: 1.0,
            seq_len: 3,
            split: Split::Train,
            source: "local".into(),
            teacher_weights: "w".into(),
        };
        let rows: Vec<LogitsRow> = (0..4)
            .map(|r| LogitsRow {
                row_index: 10 + r,
                input_ids: vec![1, 2, r as i32],
                topk_ids: (0..6).map(|i| i + r as i32).collect(),
                topk_logprobs: (0..6).map(|i| -(i as f32) - r as f32 / 10.0).collect(),
            })
            .collect();
        let path = dir.path().join("train-00000.arrow");
        write_logits_shard(&path, &meta, &rows).unwrap();
        let (m, back) = read_logits_shard(&path).unwrap();
        assert_eq!(m, meta);
        assert_eq!(back, rows);
        let mut bad = rows[0].clone();
        bad.topk_ids.pop();
        let err = write_logits_shard(&path, &meta, &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 10") && err.contains("5 ids"), "{err}");
    }
}
